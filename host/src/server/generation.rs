//! What every generating endpoint does: resolve and load the model, build the prompt,
//! apply options and the structured-output constraint, submit to the engine loop, and
//! turn its events into a stream whose drop cancels the sequence.

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use corral_generation::structured::{Grammar, JsonConstraint};
use corral_generation::{
    context::{ContextPolicy, fit_prompt},
    options::SamplingOptions,
    sampler::Constraint,
    thinking::{Think, ThinkingParser, opens_think, template_thinks},
    toolcall::{ToolCall, ToolCallParser},
};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

use super::{AppState, scheduler::UseGuard, util::ApiError};
use crate::{
    engine_loop::{Event, Request, Stats, TokenLogprob},
    prompt::Message,
};

/// What to generate from.
#[derive(Clone)]
pub enum PromptSpec {
    /// A chat.
    Chat {
        /// The request's messages.
        messages: Vec<Message>,
        /// Tools offered to the model.
        tools: Option<Vec<Value>>,
        /// A final assistant message is the start of the answer, which continues it
        /// (Anthropic's prefill), rather than a finished turn.
        continue_final: bool,
    },
    /// A completion prompt.
    Completion {
        /// The text.
        prompt: String,
        /// A system prompt overriding the model's SYSTEM.
        system: Option<String>,
        /// Send the prompt as is, without the template.
        raw: bool,
        /// Earlier context tokens (Ollama's `context`).
        context: Vec<u32>,
        /// A per-request template (a Go template) overriding the model's.
        template: Option<String>,
    },
}

/// Where a running generation's output comes from.
enum Source {
    /// A local engine loop; the guard keeps the model loaded and starts its keep-alive
    /// when dropped.
    Local { rx: UnboundedReceiver<Event>, _guard: UseGuard },
    /// A remote model ([`super::remote`]): pieces already parsed by the remote; dropping
    /// the receiver cancels the remote request.
    Remote(UnboundedReceiver<Piece>),
}

/// A running generation: the events, the model in use, and timing.
pub struct Running {
    source: Source,
    /// When the request arrived.
    pub started: Instant,
    /// Time spent loading the model for it.
    pub load: Duration,
    /// The prompt tokens submitted.
    pub prompt: Vec<u32>,
    /// The model's name.
    pub model: String,
    state: Arc<AppState>,
    first: bool,
    /// Set for thinking models: splits `<think>` blocks from the answer.
    thinking: Option<ThinkingParser>,
    /// Set for chats that offer tools: holds back and parses tool calls.
    tools: Option<ToolCallParser>,
    /// Pieces decided but not yet returned.
    pending: std::collections::VecDeque<Piece>,
    /// Log-probabilities of tokens sampled since the last [`Running::take_logprobs`].
    logprobs: Vec<TokenLogprob>,
    /// The request again, for one more try if the engine dies before any output: kept
    /// for models spread over RPC workers, where a worker lost while the model sat idle
    /// shows only at the next step, which then ends the engine (the retry loads the model
    /// again without that worker).
    retry: Option<GenRequest>,
}

/// One item of a generation's output.
pub enum Piece {
    /// Text.
    Text(String),
    /// Thinking text (models whose template thinks, unless `think: false`).
    Thinking(String),
    /// Tool calls the model made (chats that offer tools; before `Done`).
    ToolCalls(Vec<ToolCall>),
    /// The end, with counters.
    Done(Stats),
    /// A failure (before or after some text).
    Error(ApiError),
}

impl Running {
    /// Parses the output for calls of `tools` (an empty list: no parsing): text that
    /// starts like a tool call is held back and comes out as [`Piece::ToolCalls`] (or as
    /// text, if it is not one).
    pub fn with_tools(mut self, tools: Option<&[Value]>) -> Self {
        if matches!(self.source, Source::Remote(_)) {
            // A remote model's tool calls come parsed.
            return self;
        }
        self.tools = tools.filter(|t| !t.is_empty()).map(ToolCallParser::new);
        self
    }

    /// The log-probabilities of the tokens sampled so far and not yet taken (requests
    /// that asked for them); take them when sending the text the tokens produced.
    pub fn take_logprobs(&mut self) -> Vec<TokenLogprob> {
        std::mem::take(&mut self.logprobs)
    }

    /// The next piece; `None` after `Done`/`Error`.
    pub async fn next(&mut self) -> Option<Piece> {
        if let Some(p) = self.pending.pop_front() {
            return Some(p);
        }
        let rx = match &mut self.source {
            Source::Local { rx, .. } => rx,
            Source::Remote(rx) => {
                let p = rx.recv().await;
                if self.first && matches!(p, Some(Piece::Text(_) | Piece::Thinking(_))) {
                    self.first = false;
                    self.state.metrics.ttft(self.started.elapsed().as_secs_f64());
                }
                return match p {
                    None if self.state.shutting_down() => {
                        Some(Piece::Error(ApiError::busy("the server is shutting down")))
                    }
                    other => other,
                };
            }
        };
        loop {
            let Some(ev) = rx.recv().await else {
                rx.close();
                return if self.state.shutting_down() {
                    Some(Piece::Error(ApiError::busy("the server is shutting down")))
                } else {
                    None
                };
            };
            match ev {
                Event::PromptDone { .. } => continue,
                Event::Logprob(lp) => {
                    self.logprobs.push(lp);
                    continue;
                }
                Event::Text(t) => {
                    if self.first {
                        self.first = false;
                        self.state.metrics.ttft(self.started.elapsed().as_secs_f64());
                    }
                    let t = match &mut self.thinking {
                        Some(parser) => {
                            let split = parser.push(&t);
                            if !split.thinking.is_empty() {
                                self.pending.push_back(Piece::Thinking(split.thinking));
                            }
                            split.content
                        }
                        None => t,
                    };
                    let t = match &mut self.tools {
                        Some(parser) => parser.push(&t),
                        None => t,
                    };
                    if !t.is_empty() {
                        self.pending.push_back(Piece::Text(t));
                    }
                    match self.pending.pop_front() {
                        Some(p) => return Some(p),
                        None => continue,
                    }
                }
                Event::Done(s) => {
                    self.state.metrics.generation(
                        s.prompt_tokens - s.cached_tokens,
                        s.eval_count,
                        s.eval,
                    );
                    self.state.metrics.speculation(s.draft_tokens, s.draft_accepted);
                    let mut tail = String::new();
                    if let Some(parser) = self.thinking.take() {
                        let split = parser.finish();
                        if !split.thinking.is_empty() {
                            self.pending.push_back(Piece::Thinking(split.thinking));
                        }
                        tail = split.content;
                    }
                    if let Some(mut parser) = self.tools.take() {
                        let streamed = parser.push(&tail);
                        if !streamed.is_empty() {
                            self.pending.push_back(Piece::Text(streamed));
                        }
                        let (rest, calls) = parser.finish();
                        if !rest.is_empty() {
                            self.pending.push_back(Piece::Text(rest));
                        }
                        if !calls.is_empty() {
                            self.pending.push_back(Piece::ToolCalls(calls));
                        }
                    } else if !tail.is_empty() {
                        self.pending.push_back(Piece::Text(tail));
                    }
                    self.pending.push_back(Piece::Done(s));
                    return self.pending.pop_front();
                }
                Event::Error(e) => {
                    // Only the loss the retry is for (an engine's abort line for a lost
                    // RPC worker, the crash report carries it): a request that itself ended the engine is
                    // not run again, and other errors are not delayed.
                    if self.first
                        && self.pending.is_empty()
                        && e.message.contains(corral_backend_api::RPC_WORKER_LOST)
                        && let Some(again) = self.retry.take()
                        && self.engine_is_gone().await
                    {
                        tracing::warn!(
                            model = %self.model,
                            "the engine ended before the request's first token ({e}); \
                             loading the model again and trying once more"
                        );
                        return match Box::pin(start_once(&self.state, again, false)).await {
                            Ok(mut next) => {
                                next.started = self.started;
                                next.load += self.load;
                                next.tools = self.tools.take();
                                *self = next;
                                Box::pin(self.next()).await
                            }
                            Err(e2) => Some(Piece::Error(e2)),
                        };
                    }
                    return Some(Piece::Error(ApiError::from(e)));
                }
            }
        }
    }

    /// Whether this request's engine is gone for good (its worker ended); an engine
    /// that reported an error is given a moment to be seen as ended.
    async fn engine_is_gone(&self) -> bool {
        let Source::Local { _guard: guard, .. } = &self.source else { return false };
        for _ in 0..20 {
            if guard.loaded.model.health().is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Collects everything: the text, thinking, tool calls and the stats.
    pub async fn collect(mut self) -> Result<(Collected, Running), ApiError> {
        let mut c = Collected::default();
        while let Some(p) = self.next().await {
            match p {
                Piece::Text(t) => c.text.push_str(&t),
                Piece::Thinking(t) => c.thinking.push_str(&t),
                Piece::ToolCalls(calls) => c.calls.extend(calls),
                Piece::Done(s) => {
                    c.stats = s;
                    return Ok((c, self));
                }
                Piece::Error(e) => return Err(e),
            }
        }
        Err(ApiError::internal("the engine stopped before the answer was complete"))
    }
}

/// A whole answer, for `stream: false`.
#[derive(Debug, Default)]
pub struct Collected {
    /// The answer.
    pub text: String,
    /// Its thinking (thinking models).
    pub thinking: String,
    /// Tool calls (chats that offer tools).
    pub calls: Vec<ToolCall>,
    /// Counters.
    pub stats: Stats,
}

/// The parsed, validated parts of a generation request (before the model is loaded).
#[derive(Clone)]
pub struct GenRequest {
    /// The model as the request names it (resolved when it is loaded).
    pub model: String,
    /// keep_alive of the request (`None`: the default).
    pub keep_alive: Option<Option<Duration>>,
    /// Options JSON of the request (Ollama's names).
    pub options: Option<Value>,
    /// Structured output grammar.
    pub grammar: Option<Arc<Grammar>>,
    /// The prompt.
    pub prompt: PromptSpec,
    /// Shift the context when a sequence fills it (Ollama's `shift`, default true).
    pub shift: bool,
    /// Log-probabilities with this many alternatives per token (`None`: none).
    pub logprobs: Option<u8>,
    /// A prompt longer than the window keeps its start and end (`true`, Ollama's
    /// default) or is refused with 400 (`"truncate": false`).
    pub truncate: bool,
    /// Ollama's `think`: on (or an effort level, passed to the template as
    /// `reasoning_effort`) asks for thinking (400 for a model that does not think), off
    /// leaves `<think>` blocks in the content, `None` splits them out for a thinking model.
    pub think: Option<Think>,
    /// Generate past end-of-generation tokens (see [`Request::ignore_eos`]).
    pub ignore_eos: bool,
    /// Reuse a cached prompt prefix (see [`Request::cache_prompt`]).
    pub cache_prompt: bool,
}

impl GenRequest {
    /// A chat with the defaults of the agent APIs (Anthropic's Messages, OpenAI's
    /// Responses): the server's keep-alive, context shift and truncation on, no
    /// log-probabilities, the end-of-sequence token honoured, prompt prefixes reused.
    pub fn chat(
        model: String,
        options: Value,
        grammar: Option<Arc<Grammar>>,
        think: Option<bool>,
        messages: Vec<Message>,
        tools: Option<Vec<Value>>,
    ) -> GenRequest {
        GenRequest {
            model,
            keep_alive: None,
            options: Some(options),
            grammar,
            shift: true,
            truncate: true,
            logprobs: None,
            think: think.map(Think::from),
            ignore_eos: false,
            cache_prompt: true,
            prompt: PromptSpec::Chat { messages, tools, continue_final: false },
        }
    }
}

/// Refuses, as Ollama does (400), what the model cannot do: generating with an embedding
/// model, tools offered to a model whose template has no place for them (the model
/// would never see them; clients fall back to prompting on this error), and images (no
/// engine takes them yet). `chat` is a chat's messages and tools, `None` a completion.
fn check_capabilities(
    name: &str,
    caps: &[&str],
    chat: Option<(&[Message], Option<&[Value]>)>,
) -> Result<(), ApiError> {
    let refuse =
        |what: &str| Err(ApiError::bad_request(format!("\"{name}\" does not support {what}")));
    let Some((messages, tools)) = chat else {
        return if caps.contains(&"completion") { Ok(()) } else { refuse("generate") };
    };
    if !caps.contains(&"completion") {
        return refuse("chat");
    }
    if tools.is_some_and(|t| !t.is_empty()) && !caps.contains(&"tools") {
        return refuse("tools");
    }
    // Every API's images: none may be dropped unseen, and no engine takes images yet
    // (a model with a projector included; `/api/chat` refuses them as this does).
    if messages.iter().any(|m| !m.images.is_empty()) {
        return refuse("images (vision)");
    }
    Ok(())
}

/// Starts a generation.
pub async fn start(state: &Arc<AppState>, req: GenRequest) -> Result<Running, ApiError> {
    start_once(state, req, true).await
}

/// [`start`]; `may_retry`: keep the request for one more try (see [`Running::retry`]).
async fn start_once(
    state: &Arc<AppState>,
    req: GenRequest,
    may_retry: bool,
) -> Result<Running, ApiError> {
    let started = Instant::now();
    // Bad options are a 400 before any model is loaded for them.
    let mut num_ctx = None;
    if let Some(o) = &req.options {
        let mut check = SamplingOptions::default();
        check.apply_json(o)?;
        check.validate()?;
        num_ctx = check.num_ctx;
    }
    if let Some(target) = state.remotes.resolve(&state.sched, &req.model)? {
        let model = target.name.clone();
        let rx = super::remote::start(&state.remotes, target, req).await?;
        return Ok(Running {
            source: Source::Remote(rx),
            started,
            load: Duration::ZERO,
            prompt: Vec::new(),
            model,
            state: state.clone(),
            first: true,
            thinking: None,
            tools: None,
            pending: Default::default(),
            logprobs: Vec::new(),
            retry: None,
        });
    }
    // The request's num_ctx (re)loads the model with that context, as Ollama does.
    let (guard, load) = state.sched.acquire(&req.model, req.keep_alive, num_ctx).await?;
    let loaded = guard.loaded.clone();
    let retry = (may_retry && uses_remote_devices(&loaded.model.meta)).then(|| req.clone());
    let chat = match &req.prompt {
        PromptSpec::Chat { messages, tools, .. } => Some((messages.as_slice(), tools.as_deref())),
        PromptSpec::Completion { .. } => None,
    };
    check_capabilities(&req.model, &loaded.capabilities, chat)?;
    let options =
        super::scheduler::Scheduler::options_for(&loaded.model_ref, req.options.as_ref())?;
    // What the sampler would refuse in the engine loop, refused here: a 400 before the
    // stream starts.
    if let Some(&(bad, _)) = options.logit_bias.iter().find(|(t, _)| *t >= loaded.model.vocab_size)
    {
        return Err(ApiError::bad_request(format!(
            "option `logit_bias` names token {bad}, but {} has a vocabulary of {} tokens",
            loaded.model_ref.name, loaded.model.vocab_size
        )));
    }
    let model_name = loaded.model_ref.name.clone();
    let (shift, logprobs) = (req.shift, req.logprobs);
    let policy = if req.truncate { ContextPolicy::Truncate } else { ContextPolicy::Refuse };
    let state2 = state.clone();
    // Tokenizing and the token table touch the plugin: keep them off the async threads.
    let think = req.think;
    let built = tokio::task::spawn_blocking(move || {
        build(&loaded, req.prompt, req.grammar, options, policy, think)
    })
    .await
    .map_err(|e| ApiError::internal(format!("prompt task failed: {e}")))??;
    let Built { tokens: prompt, constraint, options, thinks, opens_think } = built;
    if think.is_some_and(Think::enabled) && !thinks {
        return Err(ApiError::bad_request(format!("\"{model_name}\" does not support thinking")));
    }
    let thinking = (thinks && think != Some(Think::Off)).then(|| ThinkingParser::new(opens_think));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    guard.loaded.submit(
        Request {
            prompt: prompt.clone(),
            options,
            constraint,
            events: tx,
            cancel: state2.cancel_all.clone(),
            submitted: Instant::now(),
            shift,
            logprobs,
            ignore_eos: req.ignore_eos,
            cache_prompt: req.cache_prompt,
        },
        state2.sched.settings.max_queue,
    )?;
    Ok(Running {
        source: Source::Local { rx, _guard: guard },
        started,
        load,
        prompt,
        model: model_name,
        state: state2,
        first: true,
        thinking,
        tools: None,
        pending: Default::default(),
        logprobs: Vec::new(),
        retry,
    })
}

/// Whether a loaded model holds layers on RPC workers.
fn uses_remote_devices(meta: &corral_backend_api::ModelInfo) -> bool {
    crate::rpc::Placement::of(meta).is_some_and(|p| p.devices.iter().any(|d| d.kind == "remote"))
}

/// A prompt ready for the engine loop.
struct Built {
    tokens: Vec<u32>,
    constraint: Option<Box<dyn Constraint>>,
    options: SamplingOptions,
    /// The template is a thinking model's.
    thinks: bool,
    /// The rendered prompt ends inside an opened `<think>` block.
    opens_think: bool,
}

fn build(
    loaded: &super::scheduler::Loaded,
    spec: PromptSpec,
    grammar: Option<Arc<Grammar>>,
    options: SamplingOptions,
    policy: ContextPolicy,
    think: Option<Think>,
) -> Result<Built, ApiError> {
    let m = &loaded.model;
    let model = &loaded.model_ref;
    // Template errors are the request's (400); an engine's error keeps its class (an
    // engine that died is a 500, not the client's fault).
    let bad = |e: anyhow::Error| {
        ApiError::of_class(crate::errors::ErrorClass::of_request(&e), format!("{e:#}"))
    };
    // (thinks, opens_think) of the template used and the text it rendered.
    let think_of = |source: &str, text: &str| (template_thinks(source), opens_think(text));
    let mut thinking = (false, false);
    let tokens = match spec {
        PromptSpec::Chat { messages: asked, tools, continue_final } => {
            // The Modelfile's MESSAGEs are cut with the request's when the chat is
            // truncated (as Ollama's chatPrompt).
            let (asked, add_system) = with_model_messages(model, asked);
            let render = |msgs: Vec<Message>| {
                chat_tokens(loaded, msgs, add_system, tools.as_deref(), think, continue_final)
            };
            let num_ctx = loaded.num_ctx as usize;
            let (mut tokens, mut text) = render(asked.clone())?;
            if tokens.len() >= num_ctx && policy == ContextPolicy::Truncate && asked.len() > 1 {
                // As Ollama's chatPrompt: whole old turns go first, the system messages
                // and the last turn stay (the tokens are cut below only when those alone
                // do not fit).
                if let Some((t, x, dropped)) =
                    drop_old_turns(&asked, num_ctx, continue_final, render)
                {
                    tracing::warn!(
                        model = %model.name,
                        "chat of {} messages truncated to its last {} (and its system \
                         messages) to fit the context of {num_ctx}",
                        asked.len(),
                        asked.len() - dropped
                    );
                    (tokens, text) = (t, x);
                }
            }
            thinking = think_of(loaded.templater.template.source(), &text);
            tokens
        }
        PromptSpec::Completion { prompt, system, raw, context, template } => {
            if let Some(bad) = context.iter().find(|&&t| t >= m.vocab_size) {
                return Err(ApiError::bad_request(format!(
                    "token {bad} is beyond this model's vocabulary of {} tokens (a `context` \
                     holds the tokens of an earlier response of the same model, a prompt of \
                     token ids this model's own)",
                    m.vocab_size
                )));
            }
            let mut tokens = context;
            if raw {
                tokens.extend(m.tokenize(&prompt, tokens.is_empty(), true)?);
            } else {
                let own;
                let templater = match template.as_deref() {
                    Some(t) => {
                        // Ollama's clients send Go templates: translate as for the store.
                        let jinja = corral_generation::gotemplate::prepare(t)
                            .map_err(|e| ApiError::bad_request(format!("template: {e:#}")))?;
                        own = crate::prompt::Templater::for_request(m, &jinja).map_err(bad)?;
                        &own
                    }
                    None => &loaded.templater,
                };
                let system = system.or_else(|| model.system.clone());
                // Earlier turns come as `context` tokens; the MESSAGEs start a fresh one.
                let mut msgs: Vec<Message> = if tokens.is_empty() {
                    with_model_messages(model, Vec::new()).0
                } else {
                    Vec::new()
                };
                msgs.push(Message::new("user", prompt));
                let text = templater
                    .render_thinking(&msgs, system.as_deref(), None, true, think)
                    .map_err(bad)?;
                thinking = think_of(templater.template.source(), &text);
                let more = if tokens.is_empty() {
                    templater.tokenize(m, &text)
                } else {
                    templater.tokenize_continuation(m, &text)
                };
                tokens.extend(more.map_err(bad)?);
            }
            tokens
        }
    };
    let asked = tokens.len();
    let tokens =
        fit_prompt(&tokens, loaded.num_ctx as usize, options.num_keep, options.num_predict, policy)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if tokens.len() < asked {
        // As Ollama logs it: the window is the model's as loaded (a request's num_ctx
        // reloads it for every client).
        tracing::warn!(
            model = %model.name,
            "prompt of {asked} tokens truncated to {} to fit the context of {}",
            tokens.len(),
            loaded.num_ctx
        );
    }
    if tokens.is_empty() {
        return Err(ApiError::bad_request("the prompt is empty after tokenization"));
    }
    let constraint: Option<Box<dyn Constraint>> = match grammar {
        Some(g) => Some(Box::new(JsonConstraint::new(g, loaded.token_table()?))),
        None => None,
    };
    let (thinks, opens_think) = thinking;
    Ok(Built { tokens, constraint, options, thinks, opens_think })
}

/// The chat `asked` without its oldest turns: everything before a user message goes
/// except the system messages, as few turns as make its prompt (by `render`) shorter
/// than `num_ctx` tokens. A turn goes whole (a tool call stays with its results, and
/// templates that insist on alternating roles still see them alternate); the last turn
/// always stays (with `continue_final`, the user message an assistant prefill answers
/// too). A cut whose chat the template refuses counts as one that does not fit. When
/// no cut fits, the shortest chat the template takes (its tokens are cut afterwards);
/// `None` when there is no cut to make or the template takes none. The turns kept are
/// found from the end, doubling, then by bisection (each try renders only what it keeps),
/// the prompt's length taken to grow with them. Returns the tokens, the text, and how
/// many messages went.
fn drop_old_turns(
    asked: &[Message],
    num_ctx: usize,
    continue_final: bool,
    render: impl Fn(Vec<Message>) -> Result<(Vec<u32>, String), ApiError>,
) -> Option<(Vec<u32>, String, usize)> {
    let last = asked.len().checked_sub(1)?;
    // The last message a cut may not pass: the last user message when the final
    // message is a prefill (its question stays), else the last message itself.
    let keep = match asked.last() {
        Some(m) if continue_final && m.role == "assistant" => {
            asked.iter().rposition(|m| m.role == "user").unwrap_or(last)
        }
        _ => last,
    };
    let cuts: Vec<usize> = (1..=keep).filter(|&c| asked[c].role == "user").collect();
    let without = |cut: usize| -> (Vec<Message>, usize) {
        let kept: Vec<Message> = asked
            .iter()
            .enumerate()
            .filter(|(i, m)| *i >= cut || m.role == "system")
            .map(|(_, m)| m.clone())
            .collect();
        let dropped = asked.len() - kept.len();
        (kept, dropped)
    };
    // Turns kept from the end: 1, 2, 4, ... while the chat fits (each try renders only
    // what it keeps, so a chat of 100,000 turns of which a few dozen fit costs a few
    // small renders), then a binary search between the last that fit and the first that
    // did not. `kept(k)`: the chat from the k-th cut from the end.
    let n = cuts.len();
    if n == 0 {
        return None;
    }
    let try_keep = |k: usize| {
        let (kept, dropped) = without(cuts[n - k]);
        render(kept).ok().map(|(tokens, text)| (tokens, text, dropped))
    };
    let fits = |r: &Option<(Vec<u32>, String, usize)>| {
        r.as_ref().is_some_and(|(tokens, _, _)| tokens.len() < num_ctx)
    };
    let first = try_keep(1);
    if !fits(&first) {
        // Not even the last turn fits: the shortest chat the template takes.
        return first.or_else(|| (2..=n).find_map(try_keep));
    }
    let (mut good, mut best, mut bad) = (1, first, None);
    while bad.is_none() && good < n {
        let k = (good * 2).min(n);
        let r = try_keep(k);
        if fits(&r) {
            (good, best) = (k, r);
        } else {
            bad = Some(k);
        }
    }
    if let Some(mut bad) = bad {
        while bad - good > 1 {
            let k = good + (bad - good) / 2;
            let r = try_keep(k);
            if fits(&r) {
                (good, best) = (k, r);
            } else {
                bad = k;
            }
        }
    }
    best
}

/// The chat a model sees: the Modelfile's MESSAGEs (a conversation put before the
/// request's), then the request's messages; and whether the model's SYSTEM goes first
/// (unless the request brings its own system message).
fn with_model_messages(
    model: &crate::models::ModelRef,
    asked: Vec<Message>,
) -> (Vec<Message>, bool) {
    let add_system = asked.first().is_none_or(|m| m.role != "system");
    let all =
        model.messages.iter().map(|x| Message::new(&x.role, &x.content)).chain(asked).collect();
    (all, add_system)
}

/// A chat rendered with the model's template (its SYSTEM first when `add_system`) and
/// tokenized: the tokens and the rendered text (`asked` as [`with_model_messages`] made it).
fn chat_tokens(
    loaded: &super::scheduler::Loaded,
    asked: Vec<Message>,
    add_system: bool,
    tools: Option<&[Value]>,
    think: Option<Think>,
    continue_final: bool,
) -> Result<(Vec<u32>, String), ApiError> {
    let model = &loaded.model_ref;
    let bad = |e: anyhow::Error| {
        ApiError::of_class(crate::errors::ErrorClass::of_request(&e), format!("{e:#}"))
    };
    let mut messages: Vec<Message> = Vec::with_capacity(asked.len() + 1);
    if let Some(sys) = model.system.as_ref().filter(|_| add_system) {
        messages.push(Message::new("system", sys));
    }
    messages.extend(asked);
    let prefill = messages
        .last()
        .filter(|m| continue_final && m.role == "assistant" && !m.content.trim().is_empty())
        .map(|m| m.content.clone());
    let text = match prefill {
        None => {
            loaded.templater.render_thinking(&messages, None, tools, true, think).map_err(bad)?
        }
        Some(start) => {
            let closed = loaded
                .templater
                .render_thinking(&messages, None, tools, false, think)
                .map_err(bad)?;
            // Where the final message starts: the conversation before it, opened for
            // the assistant, shares its text with the closed rendering up to there.
            // (A template that refuses that conversation: searched from the start.)
            let before = loaded.templater.render_thinking(
                &messages[..messages.len() - 1],
                None,
                tools,
                true,
                think,
            );
            let from = before.map_or(0, |b| common_prefix_len(&b, &closed));
            match continue_from(closed, from, &start) {
                Some(open) => open,
                // A template that rewrites the text: the turn stays closed, a new one
                // opens (as without a prefill).
                None => loaded
                    .templater
                    .render_thinking(&messages, None, tools, true, think)
                    .map_err(bad)?,
            }
        }
    };
    let tokens = loaded.templater.tokenize(&loaded.model, &text).map_err(bad)?;
    Ok((tokens, text))
}

/// A conversation rendered with its final (assistant) message `start` as a finished
/// turn, cut right after that message's text so that generation continues it, as
/// Hugging Face's `continue_final_message` does: the first occurrence of the text (of
/// the trimmed text, for a template that trims messages) at or after byte `from`, where
/// the message starts. `None` when the template does not print the text.
fn continue_from(mut rendered: String, from: usize, start: &str) -> Option<String> {
    let tail = rendered.get(from..)?;
    let end = [start, start.trim()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .find_map(|s| tail.find(s).map(|i| from + i + s.len()))?;
    rendered.truncate(end);
    Some(rendered)
}

/// Bytes two texts share at their start, on a character boundary of both.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
}

/// The number of tokens a chat's prompt takes with `model`'s template and tokenizer
/// (loading the model if it is not loaded), as it would be submitted before fitting to
/// the context window; `continue_final` as [`PromptSpec::Chat`]'s.
pub async fn count_chat_tokens(
    state: &Arc<AppState>,
    model: &str,
    messages: Vec<Message>,
    tools: Option<Vec<Value>>,
    think: Option<bool>,
    continue_final: bool,
) -> Result<usize, ApiError> {
    if let Some(target) = state.remotes.resolve(&state.sched, model)? {
        return super::remote::count_tokens(&state.remotes, &target, messages, tools).await;
    }
    let (guard, _) = state.sched.acquire(model, None, None).await?;
    let loaded = guard.loaded.clone();
    // What the messages themselves would be refused for.
    check_capabilities(model, &loaded.capabilities, Some((&messages, tools.as_deref())))?;
    let (tokens, _) = tokio::task::spawn_blocking(move || {
        let (messages, add_system) = with_model_messages(&loaded.model_ref, messages);
        let think = think.map(Think::from);
        chat_tokens(&loaded, messages, add_system, tools.as_deref(), think, continue_final)
    })
    .await
    .map_err(|e| ApiError::internal(format!("prompt task failed: {e}")))??;
    drop(guard);
    Ok(tokens.len())
}

/// Whether `model`'s chat template thinks (loading the model if it is not loaded): APIs
/// whose clients ask for thinking whatever the model use it to ask only thinking models.
pub async fn model_thinks(state: &Arc<AppState>, model: &str) -> Result<bool, ApiError> {
    // A remote model's server decides.
    if state.remotes.resolve(&state.sched, model)?.is_some() {
        return Ok(true);
    }
    let (guard, _) = state.sched.acquire(model, None, None).await?;
    Ok(template_thinks(guard.loaded.templater.template.source()))
}

/// Most stop strings one request may give (the options parser's bound, checked here
/// first for the APIs' own message).
pub use corral_generation::options::MAX_STOP_STRINGS;

/// The sampling fields the OpenAI- and Anthropic-style APIs share, in their own names.
#[derive(Debug, Default, Clone)]
pub struct SamplingFields {
    /// Most tokens to generate (`max_tokens`, `max_output_tokens`).
    pub max_tokens: Option<i64>,
    /// Softmax temperature.
    pub temperature: Option<f64>,
    /// The largest temperature the API allows (2 for OpenAI, 1 for Anthropic).
    pub max_temperature: f64,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Top-k sampling.
    pub top_k: Option<i64>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Seed.
    pub seed: Option<i64>,
}

impl SamplingFields {
    /// Ollama's `options` object for these fields; 400 for a value out of range.
    pub fn to_options(&self, max_tokens_name: &str) -> Result<Value, ApiError> {
        let mut o = serde_json::Map::new();
        if let Some(m) = self.max_tokens {
            if m < 1 {
                return Err(ApiError::bad_request(format!(
                    "{max_tokens_name} must be at least 1, got {m}"
                )));
            }
            o.insert("num_predict".into(), Value::from(m.min(i64::from(i32::MAX))));
        }
        if let Some(t) = self.temperature {
            if !(0.0..=self.max_temperature).contains(&t) {
                return Err(ApiError::bad_request(format!(
                    "temperature must be in [0, {}], got {t}",
                    self.max_temperature
                )));
            }
            o.insert("temperature".into(), Value::from(t));
        }
        if let Some(p) = self.top_p {
            if !(0.0..=1.0).contains(&p) {
                return Err(ApiError::bad_request(format!("top_p must be in [0, 1], got {p}")));
            }
            o.insert("top_p".into(), Value::from(p));
        }
        if let Some(k) = self.top_k {
            if !(0..=i64::from(i32::MAX)).contains(&k) {
                return Err(ApiError::bad_request(format!("top_k must be >= 0, got {k}")));
            }
            o.insert("top_k".into(), Value::from(k));
        }
        if self.stop.len() > MAX_STOP_STRINGS {
            return Err(ApiError::bad_request(format!(
                "at most {MAX_STOP_STRINGS} stop sequences are accepted, got {}",
                self.stop.len()
            )));
        }
        if let Some(empty) = self.stop.iter().position(String::is_empty) {
            return Err(ApiError::bad_request(format!("stop sequence {empty} is empty")));
        }
        if !self.stop.is_empty() {
            o.insert("stop".into(), Value::from(self.stop.clone()));
        }
        if let Some(s) = self.seed {
            o.insert("seed".into(), Value::from(s));
        }
        Ok(Value::Object(o))
    }
}

/// The name of a tool in OpenAI's chat shape (`{"type": "function", "function": {...}}`).
pub fn tool_name(tool: &Value) -> Option<&str> {
    tool.get("function")?.get("name")?.as_str()
}

/// Most tools one request may offer, on every API.
pub const MAX_TOOLS: usize = 1_000;

/// Most bytes the tools of one request may take as JSON, on every API. A MiB of tool
/// definitions is some 250,000 tokens, past any model's window, while the template and
/// its sandbox hold the tools many times over (13 MB of tools took 2 GB).
pub const MAX_TOOLS_BYTES: usize = 1 << 20;

/// Refuses tools whose JSON is longer than [`MAX_TOOLS_BYTES`] (counted without copying).
pub fn check_tools_size(tools: &[Value]) -> Result<(), ApiError> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            if self.0 > MAX_TOOLS_BYTES {
                return Err(std::io::Error::other("too long"));
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, tools) {
        Ok(()) => Ok(()),
        Err(_) => Err(ApiError::bad_request(format!(
            "the tools take more than {} KiB as JSON; offer fewer or shorter tools",
            MAX_TOOLS_BYTES >> 10
        ))),
    }
}

/// The tools of a request in the chat shape that OpenAI's `/v1/chat/completions` and
/// Ollama's `/api/chat` share (`{"type": "function", "function": {"name", "description",
/// "parameters"}}`), checked so that a malformed entry is a 400 naming it rather than
/// something the template or the tool-call parser trips over: at most [`MAX_TOOLS`], each
/// an object whose `type` (when given) is `"function"`, whose `function` is an object
/// with a non-empty string `name`, a string `description` if any and a JSON schema
/// object (or null) as `parameters`. Entries are kept as sent (templates read their other
/// fields); an empty list is no tools.
pub fn chat_tools(tools: Option<&[Value]>) -> Result<Option<Vec<Value>>, ApiError> {
    let Some(tools) = tools.filter(|t| !t.is_empty()) else { return Ok(None) };
    if tools.len() > MAX_TOOLS {
        return Err(ApiError::bad_request(format!(
            "{} tools offered; at most {MAX_TOOLS} are accepted",
            tools.len()
        )));
    }
    check_tools_size(tools)?;
    for (i, tool) in tools.iter().enumerate() {
        if !tool.is_object() {
            return Err(ApiError::bad_request(format!(
                "tools[{i}] must be an object like {{\"type\": \"function\", \"function\": \
                 {{\"name\": ...}}}}, got {}",
                json_kind(tool)
            )));
        }
        match tool.get("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) if t == "function" => {}
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "tools[{i}].type: only \"function\" tools are supported, got {other}"
                )));
            }
        }
        let Some(function) = tool.get("function").filter(|f| f.is_object()) else {
            return Err(ApiError::bad_request(format!(
                "tools[{i}].function: an object with the function's name is required"
            )));
        };
        if function.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(format!(
                "tools[{i}].function.name: a non-empty string is required"
            )));
        }
        if function.get("description").is_some_and(|d| !d.is_string() && !d.is_null()) {
            return Err(ApiError::bad_request(format!(
                "tools[{i}].function.description must be a string"
            )));
        }
        if function.get("parameters").is_some_and(|p| !p.is_object() && !p.is_null()) {
            return Err(ApiError::bad_request(format!(
                "tools[{i}].function.parameters must be a JSON schema object"
            )));
        }
    }
    Ok(Some(tools.to_vec()))
}

/// A request field's `type` for a message: quoted, or "missing".
pub fn shown_type(t: Option<&str>) -> String {
    t.map_or_else(|| "missing".to_string(), |t| format!("{t:?}"))
}

/// A JSON value's kind, for messages.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What a request's `tool_choice` asks, whichever API spelled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides (the default).
    Auto,
    /// The model must call one of the tools (OpenAI's `required`, Anthropic's `any`).
    Required,
    /// The model must call this tool.
    Named(String),
    /// The model does not call tools: they stay in the prompt, the output is not parsed.
    None,
}

impl ToolChoice {
    /// OpenAI's `tool_choice`: `"auto"`, `"required"`, `"none"`, or a function, nested as
    /// chat completions send it (`{"type": "function", "function": {"name"}}`) or flat as
    /// the Responses API does (`{"type": "function", "name"}`).
    pub fn of_openai(v: Option<&Value>) -> Result<Self, ApiError> {
        const EXPECTED: &str = "tool_choice must be \"auto\", \"required\", \"none\" or \
             {\"type\": \"function\", \"function\": {\"name\": ...}}";
        match v {
            None | Some(Value::Null) => Ok(Self::Auto),
            Some(Value::String(s)) => match s.as_str() {
                "auto" => Ok(Self::Auto),
                "required" => Ok(Self::Required),
                "none" => Ok(Self::None),
                other => Err(ApiError::bad_request(format!("{EXPECTED}, got {other:?}"))),
            },
            Some(v) if v.get("type").and_then(Value::as_str) == Some("function") => {
                let name = v
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .or_else(|| v.get("name"))
                    .and_then(Value::as_str);
                match name {
                    Some(name) => Ok(Self::Named(name.to_string())),
                    None => Err(ApiError::bad_request(
                        "tool_choice.function.name: the name of one of the tools is required",
                    )),
                }
            }
            Some(other) => Err(ApiError::bad_request(format!("{EXPECTED}, got {other}"))),
        }
    }

    /// The grammar a request runs under: the forced call's when this choice asks for one,
    /// else `otherwise` (the request's structured output).
    pub fn grammar_or(
        &self,
        tools: Option<&[Value]>,
        otherwise: impl FnOnce() -> Result<Option<Arc<Grammar>>, ApiError>,
    ) -> Result<Option<Arc<Grammar>>, ApiError> {
        match self.forced_call_grammar(tools)? {
            Some(g) => Ok(Some(g)),
            None => otherwise(),
        }
    }

    /// The grammar that forces the call this choice asks for (`None` when it asks none),
    /// over `tools` in the chat shape; a 400 when the named tool is not among them or
    /// a call is required of no tools.
    pub fn forced_call_grammar(
        &self,
        tools: Option<&[Value]>,
    ) -> Result<Option<Arc<Grammar>>, ApiError> {
        let tools = tools.unwrap_or_default();
        match self {
            Self::Required => forced_tool_call_grammar(tools, None).map(Some),
            Self::Named(name) => forced_tool_call_grammar(tools, Some(name)).map(Some),
            Self::Auto | Self::None => Ok(None),
        }
    }
}

/// A grammar that makes the model call a tool: one of `tools` (OpenAI's chat shape), or
/// the one named `only`. The output is the JSON object `{"name", "arguments"}` the
/// tool-call parser reads, its arguments constrained by the tool's parameter schema.
pub fn forced_tool_call_grammar(
    tools: &[Value],
    only: Option<&str>,
) -> Result<Arc<Grammar>, ApiError> {
    let chosen: Vec<(&str, Value)> = tools
        .iter()
        .filter(|t| only.is_none_or(|name| tool_name(t) == Some(name)))
        .filter_map(|t| {
            let name = tool_name(t)?;
            let parameters = t
                .get("function")
                .and_then(|f| f.get("parameters"))
                .filter(|p| p.is_object())
                .cloned()
                .unwrap_or_else(|| serde_json::json!({"type": "object"}));
            Some((name, parameters))
        })
        .collect();
    // Each tool's schema moves under `properties/arguments` of its call (and under
    // `anyOf/i` when several tools may be called), so its local `$ref`s move with it.
    let several = chosen.len() > 1;
    let calls: Vec<Value> = chosen
        .into_iter()
        .enumerate()
        .map(|(i, (name, mut parameters))| {
            let at = if several {
                format!("#/anyOf/{i}/properties/arguments")
            } else {
                "#/properties/arguments".to_string()
            };
            rebase_local_refs(&mut parameters, &at);
            serde_json::json!({
                "type": "object",
                "properties": {"name": {"const": name}, "arguments": parameters},
                "required": ["name", "arguments"],
            })
        })
        .collect();
    let schema = match (calls.len(), only) {
        (0, Some(name)) => {
            return Err(ApiError::bad_request(format!(
                "tool_choice names the tool {name:?}, which is not among the tools"
            )));
        }
        (0, None) => {
            return Err(ApiError::bad_request(
                "tool_choice asks for a tool call, but no tools are given",
            ));
        }
        (1, _) => calls.into_iter().next().unwrap_or_default(),
        _ => serde_json::json!({"anyOf": calls}),
    };
    Grammar::from_schema(&schema).map(Arc::new).map_err(|e| {
        ApiError::bad_request(format!("a tool's input schema cannot constrain a forced call: {e}"))
    })
}

/// Rewrites the local `$ref`s of a schema that moves from a document's root to the JSON
/// pointer `at` (`#` → `at`, `#/$defs/x` → `at/$defs/x`). Values that are data, not
/// schemas (`const`, `enum`, `default`, `examples`), are left as they are.
fn rebase_local_refs(schema: &mut Value, at: &str) {
    match schema {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        if let Some(rest) = r.strip_prefix('#') {
                            *r = format!("{at}{rest}");
                        }
                    }
                    ("const" | "enum" | "default" | "examples", _) => {}
                    (_, v) => rebase_local_refs(v, at),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rebase_local_refs(v, at)),
        _ => {}
    }
}

/// A `text/event-stream` response of the lines `events` yields.
pub fn sse_response<S>(events: S) -> axum::response::Response
where
    S: futures_util::Stream<Item = String> + Send + 'static,
{
    use axum::{http::header, response::IntoResponse as _};
    use futures_util::StreamExt as _;
    let body = events.map(|text| Ok::<_, std::io::Error>(axum::body::Bytes::from(text)));
    axum::response::Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(axum::body::Body::from_stream(body))
        .unwrap_or_else(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// One server-sent event with a name: `event: NAME` and its JSON `data`.
pub fn sse_event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// A new identifier: `prefix`, then the time and a counter in hex (unique within a
/// server's lifetime, and across restarts unless the clock goes back).
pub fn new_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}{nanos:x}{n:06x}")
}

/// Logs the unknown top-level fields of a request at debug level (the APIs that accept
/// anything their clients add, and ignore it).
pub fn log_ignored_fields(api: &str, unknown: &[String]) {
    if !unknown.is_empty() {
        let names: Vec<&str> = unknown.iter().map(String::as_str).take(32).collect();
        tracing::debug!(api, fields = ?names, "ignored unknown request fields");
    }
}

/// Parses `format` (Ollama) into a grammar; 400 on an invalid schema.
pub fn grammar_of(format: Option<&Value>) -> Result<Option<Arc<Grammar>>, ApiError> {
    match format {
        None => Ok(None),
        Some(f) => Grammar::from_format(f)
            .map(|g| g.map(Arc::new))
            .map_err(|e| ApiError::bad_request(e.to_string())),
    }
}

/// A shared flag for cancelling every request (shutdown).
pub fn new_cancel_flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

#[cfg(test)]
mod tests {

    /// Old turns go whole, the fewest that make the chat fit; system messages, the last
    /// turn and a prefill's question stay; a cut the template refuses does not count.
    #[test]
    fn a_long_chat_drops_its_oldest_turns_first() {
        let m = |role: &str, n: usize| Message::new(role, "x".repeat(n));
        // One token per byte of content; roles must alternate after the system messages
        // (as Mistral's and Gemma 2's templates insist).
        let render = |msgs: Vec<Message>| -> Result<(Vec<u32>, String), ApiError> {
            let turns: Vec<&Message> = msgs.iter().filter(|m| m.role != "system").collect();
            let alternate = turns
                .iter()
                .enumerate()
                .all(|(i, m)| m.role == if i % 2 == 0 { "user" } else { "assistant" });
            if !alternate {
                return Err(ApiError::bad_request("Conversation roles must alternate"));
            }
            let text: String = msgs.iter().map(|m| format!("{}:{};", m.role, m.content)).collect();
            Ok((vec![0; msgs.iter().map(|m| m.content.len()).sum()], text))
        };
        let chat = [
            m("system", 10),
            m("user", 30),
            m("assistant", 30),
            m("user", 30),
            m("assistant", 30),
            m("user", 5),
        ];
        // Two turns go (a user and an assistant each), never one message alone.
        let (tokens, text, dropped) = super::drop_old_turns(&chat, 50, false, render).unwrap();
        assert_eq!((dropped, tokens.len()), (4, 15));
        assert!(text.starts_with("system:") && text.ends_with(&format!("user:{};", "x".repeat(5))));
        let (_, _, dropped) = super::drop_old_turns(&chat, 120, false, render).unwrap();
        assert_eq!(dropped, 2);
        // Nothing fits: the shortest chat, whose tokens are cut afterwards.
        let (tokens, _, dropped) = super::drop_old_turns(&chat, 12, false, render).unwrap();
        assert_eq!((dropped, tokens.len()), (4, 15));
        // A prefill keeps the question it answers.
        let prefill = [m("user", 40), m("assistant", 40), m("user", 20), m("assistant", 5)];
        let (_, text, dropped) = super::drop_old_turns(&prefill, 30, true, render).unwrap();
        assert_eq!(dropped, 2);
        assert!(text.starts_with(&format!("user:{};", "x".repeat(20))), "{text}");
        // One user message: nothing to cut.
        assert!(super::drop_old_turns(&[m("user", 99)], 10, false, render).is_none());
    }
    use serde_json::json;

    #[test]
    fn prefills_cut_the_rendering_after_their_text() {
        let closed = "<u>hi</u><a>1, 2, 3,</a>\n".to_string();
        let from = common_prefix_len("<u>hi</u><a>", &closed);
        assert_eq!(from, 12);
        assert_eq!(continue_from(closed, from, "1, 2, 3,").unwrap(), "<u>hi</u><a>1, 2, 3,");
        // A template that trims the message: the trimmed text is found.
        let trimmed = "<a>{ \"x\":</a>".to_string();
        assert_eq!(continue_from(trimmed, 3, " { \"x\": ").unwrap(), "<a>{ \"x\":");
        // The text in the closing tag does not count: the first match from the start.
        let chatml = "<|im_start|>assistant\n<<|im_end|>\n".to_string();
        assert_eq!(continue_from(chatml, 22, "<").unwrap(), "<|im_start|>assistant\n<");
        // A template that drops the text: none.
        assert_eq!(continue_from("<a></a>".into(), 3, "gone"), None);
        assert_eq!(continue_from("ab".into(), 9, "a"), None);
        // Prefixes end on character boundaries.
        assert_eq!(common_prefix_len("héllo", "hèllo"), 1);
        assert_eq!(common_prefix_len("ab", "abc"), 2);
    }

    use super::*;

    #[test]
    fn chat_tools_refuse_malformed_entries_by_index() {
        let good = json!({"type": "function", "function": {"name": "f", "parameters": {}}});
        assert_eq!(
            chat_tools(Some(std::slice::from_ref(&good))).unwrap(),
            Some(vec![good.clone()])
        );
        assert_eq!(chat_tools(Some(&[])).unwrap(), None);
        let no_type = json!({"function": {"name": "f"}});
        assert!(chat_tools(Some(&[no_type])).is_ok(), "Ollama's clients may omit the type");
        for (bad, says) in [
            (json!("f"), "tools[1] must be an object"),
            (json!({"type": "retrieval", "function": {"name": "f"}}), "tools[1].type"),
            (json!({"type": "function"}), "tools[1].function"),
            (json!({"type": "function", "function": {"name": ""}}), "tools[1].function.name"),
            (json!({"type": "function", "function": {"name": 3}}), "tools[1].function.name"),
            (json!({"function": {"name": "f", "parameters": []}}), "tools[1].function.parameters"),
            (json!({"function": {"name": "f", "description": {}}}), "description"),
        ] {
            let e = chat_tools(Some(&[good.clone(), bad.clone()])).unwrap_err();
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
        let many = vec![good; MAX_TOOLS + 1];
        assert!(chat_tools(Some(&many)).unwrap_err().to_string().contains("at most"));
        let long = json!({"function": {"name": "f", "description": "x".repeat(MAX_TOOLS_BYTES)}});
        assert!(chat_tools(Some(&[long])).unwrap_err().to_string().contains("KiB"));
    }

    /// Found by an outside sweep: a forced call nests the tool's schema under the call's
    /// `arguments`, so its `#/$defs/...` pointed at nothing (400) and `#` at the wrapper
    /// (calls nested inside calls).
    #[test]
    fn forced_calls_keep_the_tools_local_refs() {
        use corral_generation::structured::Matcher;
        let addr = json!({"type": "function", "function": {"name": "addr", "parameters": {
            "$defs": {"Addr": {"type": "object", "properties": {"city": {"enum": ["Oslo"]}},
                               "required": ["city"]}},
            "type": "object", "properties": {"to": {"$ref": "#/$defs/Addr"}},
            "required": ["to"]}}});
        let tree = json!({"type": "function", "function": {"name": "tree", "parameters": {
            "type": "object", "properties": {"v": {"type": "integer"},
                "kids": {"type": "array", "items": {"$ref": "#"}, "maxItems": 2}},
            "required": ["v"]}}});
        for tools in [vec![addr.clone()], vec![tree.clone()], vec![addr, tree]] {
            let g = ToolChoice::Required.forced_call_grammar(Some(&tools)).unwrap().unwrap();
            let fits = |doc: &str| {
                let mut m = Matcher::new(g.clone());
                m.feed(doc.as_bytes()) && m.is_complete()
            };
            let names: Vec<_> = tools.iter().filter_map(tool_name).collect();
            if names.contains(&"addr") {
                assert!(fits(r#"{"name":"addr","arguments":{"to":{"city":"Oslo"}}}"#));
            }
            if names.contains(&"tree") {
                assert!(fits(r#"{"name":"tree","arguments":{"v":1,"kids":[{"v":2}]}}"#));
                let wrapper_inside = r#"{"name":"tree","arguments":{"v":1,"kids":[{"name":"tree","arguments":{"v":2}}]}}"#;
                assert!(!fits(wrapper_inside), "{names:?}");
            }
        }
    }

    #[test]
    fn tool_choice_reads_both_openai_shapes_and_forces_only_known_tools() {
        let named = ToolChoice::Named("f".into());
        let nested = json!({"type": "function", "function": {"name": "f"}});
        assert_eq!(ToolChoice::of_openai(Some(&nested)).unwrap(), named);
        let flat = json!({"type": "function", "name": "f"});
        assert_eq!(ToolChoice::of_openai(Some(&flat)).unwrap(), named);
        assert_eq!(ToolChoice::of_openai(None).unwrap(), ToolChoice::Auto);
        assert_eq!(ToolChoice::of_openai(Some(&json!("none"))).unwrap(), ToolChoice::None);
        for bad in [json!("sometimes"), json!({"type": "function"}), json!(3)] {
            assert!(ToolChoice::of_openai(Some(&bad)).is_err(), "{bad}");
        }
        let tools = [json!({"type": "function", "function": {"name": "f"}})];
        assert!(named.forced_call_grammar(Some(&tools)).unwrap().is_some());
        assert!(ToolChoice::Auto.forced_call_grammar(Some(&tools)).unwrap().is_none());
        let absent = ToolChoice::Named("g".into()).forced_call_grammar(Some(&tools));
        assert!(absent.unwrap_err().to_string().contains("\"g\""));
        assert!(ToolChoice::Required.forced_call_grammar(None).is_err());
    }
}
