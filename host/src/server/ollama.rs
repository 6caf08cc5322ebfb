//! Ollama's API: generate, chat, embed, embeddings, tags, show, ps, version.

use std::{sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use futures_util::stream;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    AppState,
    generation::{self, GenRequest, Piece, PromptSpec, Running},
    logprobs,
    scheduler::Named,
    util::{ApiError, Lenient, lenient, nanos, now_rfc3339, parse_keep_alive, rfc3339},
};
use corral_generation::{
    options::SamplingOptions,
    thinking::{Effort, Think},
    toolcall::ToolCall,
};

use crate::{engine_loop::Stats, prompt::Message};

/// Implements [`Lenient`] for request types with `extra` (and `options`).
macro_rules! lenient_request {
    ($t:ty) => {
        impl Lenient for $t {
            fn extra(&self) -> &Map<String, Value> {
                &self.extra
            }
            fn options(&self) -> Option<&Value> {
                self.options.as_ref()
            }
        }
    };
}

/// `POST /api/generate` body. Fields it does not know are accepted and ignored, as
/// Ollama does (named in the `X-Corral-Ignored-Fields` header); a known field of the
/// wrong type is a 400.
#[derive(Deserialize, Default)]
pub struct GenerateRequest {
    model: String,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    images: Option<Vec<String>>,
    #[serde(default)]
    format: Option<Value>,
    #[serde(default)]
    options: Option<Value>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    context: Option<Vec<u32>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    raw: Option<bool>,
    #[serde(default)]
    keep_alive: Option<Value>,
    #[serde(default)]
    think: Option<Value>,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    shift: Option<bool>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<u32>,
    /// Fields this endpoint does not know.
    #[serde(flatten)]
    extra: Map<String, Value>,
}
lenient_request!(GenerateRequest);

/// `POST /api/chat` body (unknown fields as [`GenerateRequest`]).
#[derive(Deserialize, Default)]
pub struct ChatRequest {
    model: String,
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    format: Option<Value>,
    #[serde(default)]
    options: Option<Value>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    keep_alive: Option<Value>,
    #[serde(default)]
    think: Option<Value>,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    shift: Option<bool>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<u32>,
    /// Fields this endpoint does not know.
    #[serde(flatten)]
    extra: Map<String, Value>,
}
lenient_request!(ChatRequest);

fn keep_alive_of(v: &Option<Value>) -> Result<Option<Option<Duration>>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => parse_keep_alive(v).map(Some),
    }
}

/// NDJSON response from a stream of JSON values.
pub fn ndjson<S>(s: S) -> Response
where
    S: futures_util::Stream<Item = Value> + Send + 'static,
{
    use futures_util::StreamExt;
    let body = s.map(|v| {
        let mut line = serde_json::to_vec(&v).unwrap_or_default();
        line.push(b'\n');
        Ok::<Bytes, std::io::Error>(Bytes::from(line))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn final_fields(v: &mut Value, s: &Stats, r: &Running) {
    let o = v.as_object_mut();
    let Some(o) = o else { return };
    o.insert(
        "done_reason".into(),
        json!(s.done_reason.map_or("stop", corral_generation::DoneReason::as_str)),
    );
    o.insert("total_duration".into(), json!(nanos(r.started.elapsed())));
    o.insert("load_duration".into(), json!(nanos(r.load)));
    // The whole prompt, cached prefix included, as Ollama reports it (llama-server's
    // `cache_n + prompt_n`; its agent and Anthropic layer read it as the context used);
    // the duration is that of the tokens evaluated.
    o.insert("prompt_eval_count".into(), json!(s.prompt_tokens.max(1)));
    o.insert("prompt_eval_duration".into(), json!(nanos(s.prompt_eval)));
    o.insert("eval_count".into(), json!(s.eval_count));
    o.insert("eval_duration".into(), json!(nanos(s.eval)));
}

/// The `num_ctx` of a request's `options` (validated: a bad value is a 400).
pub(super) fn num_ctx_of(options: Option<&Value>) -> Result<Option<u32>, ApiError> {
    let Some(o) = options else { return Ok(None) };
    let parsed = SamplingOptions::from_json(o)?;
    parsed.validate()?;
    Ok(parsed.num_ctx)
}

/// Load-only / unload-only answer (empty prompt or messages). `options.num_ctx` loads
/// the model with that context.
async fn load_only(
    state: &Arc<AppState>,
    model: &Named,
    keep_alive: Option<Option<Duration>>,
    options: Option<&Value>,
    chat: bool,
) -> Result<Response, ApiError> {
    let unload = keep_alive == Some(Some(Duration::ZERO));
    // A remote model is never loaded here: nothing to do.
    let remote = state.remotes.resolve(&state.sched, &model.name)?.is_some();
    let reason = if remote {
        if unload { "unload" } else { "load" }
    } else if unload {
        // As Ollama: unloading a model that does not exist is its 404, not a success.
        if !state.sched.is_loaded(&crate::models::load_key(&model.name)) {
            state.sched.resolve(&model.name)?;
        }
        state.sched.unload(&model.name).await;
        "unload"
    } else {
        let num_ctx = num_ctx_of(options)?;
        let (guard, _) = state.sched.acquire(&model.name, keep_alive, num_ctx).await?;
        drop(guard);
        "load"
    };
    let mut v = json!({"model": model.name, "created_at": now_rfc3339(), "done": true, "done_reason": reason});
    if chat {
        v["message"] = json!({"role": "assistant", "content": ""});
    } else {
        v["response"] = json!("");
    }
    Ok(axum::Json(v).into_response())
}

/// `POST /api/generate`.
pub async fn generate(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    lenient::<GenerateRequest, ApiError, _>("/api/generate", &body, |req| {
        generate_request(state, req)
    })
    .await
}

async fn generate_request(
    state: Arc<AppState>,
    req: GenerateRequest,
) -> Result<Response, ApiError> {
    if req.images.as_ref().is_some_and(|i| !i.is_empty()) {
        return Err(no_vision(&req.model));
    }
    let logprobs = logprobs::requested(req.logprobs, req.top_logprobs, false)?;
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request("suffix (fill-in-the-middle) is not supported yet"));
    }
    let grammar = generation::grammar_of(req.format.as_ref())?;
    let keep_alive = keep_alive_of(&req.keep_alive)?;
    let model = state.sched.named(&req.model)?;
    let prompt = req.prompt.clone().unwrap_or_default();
    let raw = req.raw.unwrap_or(false);
    let given = |o: &Option<String>| o.as_deref().is_some_and(|t| !t.is_empty());
    if raw
        && (given(&req.system)
            || given(&req.template)
            || req.context.as_ref().is_some_and(|c| !c.is_empty()))
    {
        // As Ollama: raw text goes to the model as it is.
        return Err(ApiError::bad_request(
            "raw mode does not support template, system, or context",
        ));
    }
    if prompt.is_empty() && req.context.as_ref().is_none_or(Vec::is_empty) {
        return load_only(&state, &model, keep_alive, req.options.as_ref(), false).await;
    }
    let spec = PromptSpec::Completion {
        prompt,
        system: req.system.clone(),
        raw,
        context: req.context.clone().unwrap_or_default(),
        template: req.template.clone().filter(|t| !t.is_empty()),
    };
    let running = generation::start(
        &state,
        GenRequest {
            model: model.name.clone(),
            keep_alive,
            options: req.options.clone(),
            grammar,
            prompt: spec,
            shift: req.shift.unwrap_or(true),
            logprobs,
            truncate: req.truncate.unwrap_or(true),
            think: think_of(&req.think)?,
            ignore_eos: false,
            cache_prompt: true,
        },
    )
    .await?;
    if req.stream == Some(false) {
        let (c, mut r) = running.collect().await?;
        let s = c.stats;
        let mut v = json!({"model": r.model, "created_at": now_rfc3339(), "response": c.text,
            "done": true});
        if !c.thinking.is_empty() {
            v["thinking"] = json!(c.thinking);
        }
        final_fields(&mut v, &s, &r);
        with_logprobs(&mut v, &mut r, logprobs.is_some());
        // As Ollama, a raw answer has no context to continue from.
        if !raw {
            let mut ctx = r.prompt.clone();
            ctx.extend(&s.tokens);
            v["context"] = json!(ctx);
        }
        return Ok(axum::Json(v).into_response());
    }
    let wanted = logprobs.is_some();
    Ok(ndjson(stream::unfold(Some(running), move |r| async move {
        let mut r = r?;
        match r.next().await {
            Some(Piece::Text(t)) => {
                let mut v = json!({"model": r.model, "created_at": now_rfc3339(), "response": t, "done": false});
                with_logprobs(&mut v, &mut r, wanted);
                Some((v, Some(r)))
            }
            Some(Piece::Done(s)) => {
                let mut v = json!({"model": r.model, "created_at": now_rfc3339(), "response": "", "done": true});
                final_fields(&mut v, &s, &r);
                with_logprobs(&mut v, &mut r, wanted);
                if !raw {
                    let mut ctx = r.prompt.clone();
                    ctx.extend(&s.tokens);
                    v["context"] = json!(ctx);
                }
                Some((v, None))
            }
            Some(Piece::Thinking(t)) => {
                let mut v = json!({"model": r.model, "created_at": now_rfc3339(),
                    "response": "", "thinking": t, "done": false});
                with_logprobs(&mut v, &mut r, wanted);
                Some((v, Some(r)))
            }
            // Completions offer no tools.
            Some(Piece::ToolCalls(_)) => Some((
                json!({"model": r.model, "created_at": now_rfc3339(), "response": "", "done": false}),
                Some(r),
            )),
            Some(Piece::Error(e)) => Some((json!({"error": e.message}), None)),
            None => None,
        }
    })))
}

/// Ollama's `think`: a boolean, or an effort level (`"low"`, `"medium"`, `"high"`) that
/// asks for thinking too and reaches the template as `reasoning_effort`.
fn think_of(v: &Option<Value>) -> Result<Option<Think>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(true)) => Ok(Some(Think::On)),
        Some(Value::Bool(false)) => Ok(Some(Think::Off)),
        Some(Value::String(s)) if Effort::of_ollama(s).is_some() => {
            Ok(Effort::of_ollama(s).map(Think::Level))
        }
        Some(other) => Err(ApiError::bad_request(format!(
            "think must be true, false, \"low\", \"medium\" or \"high\", not {other}"
        ))),
    }
}

/// Adds the log-probabilities of the tokens since the last chunk, when asked for.
fn with_logprobs(v: &mut Value, r: &mut Running, wanted: bool) {
    if wanted {
        v["logprobs"] = logprobs::entries(&r.take_logprobs());
    }
}

/// Tool calls as Ollama answers them: `[{"function": {"index", "name", "arguments"}}]`.
fn ollama_tool_calls(calls: &[ToolCall]) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"function": {"index": i, "name": c.name, "arguments": c.arguments}}))
        .collect()
}

/// No corral engine takes images yet: refuse them as Ollama does for a text-only model,
/// rather than answer as if they had been seen.
fn no_vision(model: &str) -> ApiError {
    ApiError::bad_request(format!("\"{model}\" does not support images (vision)"))
}

fn check_messages(model: &str, messages: &[Message]) -> Result<(), ApiError> {
    for (i, m) in messages.iter().enumerate() {
        if !m.images.is_empty() {
            return Err(no_vision(model));
        }
        if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") {
            return Err(ApiError::bad_request(format!(
                "messages[{i}]: unknown role {:?} (system, developer, user, assistant or tool)",
                m.role
            )));
        }
    }
    Ok(())
}

/// `POST /api/chat`.
pub async fn chat(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    lenient::<ChatRequest, ApiError, _>("/api/chat", &body, |req| chat_request(state, req)).await
}

async fn chat_request(state: Arc<AppState>, req: ChatRequest) -> Result<Response, ApiError> {
    let logprobs = logprobs::requested(req.logprobs, req.top_logprobs, false)?;
    let grammar = generation::grammar_of(req.format.as_ref())?;
    let keep_alive = keep_alive_of(&req.keep_alive)?;
    let mut messages = req.messages.clone().unwrap_or_default();
    // OpenAI's `developer` role (newer clients send it here too) is a system message.
    for m in &mut messages {
        if m.role == "developer" {
            m.role = "system".into();
        }
    }
    check_messages(&req.model, &messages)?;
    let tools = generation::chat_tools(req.tools.as_deref())?;
    let model = state.sched.named(&req.model)?;
    if messages.is_empty() {
        return load_only(&state, &model, keep_alive, req.options.as_ref(), true).await;
    }
    // A final assistant message is continued (a prefill), as Ollama and llama-server do.
    let spec = PromptSpec::Chat { messages, tools: tools.clone(), continue_final: true };
    let running = generation::start(
        &state,
        GenRequest {
            model: model.name.clone(),
            keep_alive,
            options: req.options.clone(),
            grammar,
            prompt: spec,
            shift: req.shift.unwrap_or(true),
            logprobs,
            truncate: req.truncate.unwrap_or(true),
            think: think_of(&req.think)?,
            ignore_eos: false,
            cache_prompt: true,
        },
    )
    .await?
    .with_tools(tools.as_deref());
    if req.stream == Some(false) {
        let (c, mut r) = running.collect().await?;
        let s = c.stats;
        let mut message = json!({"role": "assistant", "content": c.text});
        if !c.thinking.is_empty() {
            message["thinking"] = json!(c.thinking);
        }
        if !c.calls.is_empty() {
            message["tool_calls"] = ollama_tool_calls(&c.calls);
        }
        let mut v = json!({"model": r.model, "created_at": now_rfc3339(),
            "message": message, "done": true});
        final_fields(&mut v, &s, &r);
        with_logprobs(&mut v, &mut r, logprobs.is_some());
        return Ok(axum::Json(v).into_response());
    }
    let wanted = logprobs.is_some();
    Ok(ndjson(stream::unfold(Some(running), move |r| async move {
        let mut r = r?;
        match r.next().await {
            Some(Piece::Text(t)) => {
                let mut v = json!({"model": r.model, "created_at": now_rfc3339(),
                    "message": {"role": "assistant", "content": t}, "done": false});
                with_logprobs(&mut v, &mut r, wanted);
                Some((v, Some(r)))
            }
            Some(Piece::ToolCalls(calls)) => Some((
                json!({"model": r.model, "created_at": now_rfc3339(),
                    "message": {"role": "assistant", "content": "",
                        "tool_calls": ollama_tool_calls(&calls)}, "done": false}),
                Some(r),
            )),
            Some(Piece::Thinking(t)) => {
                let mut v = json!({"model": r.model, "created_at": now_rfc3339(),
                    "message": {"role": "assistant", "content": "", "thinking": t},
                    "done": false});
                with_logprobs(&mut v, &mut r, wanted);
                Some((v, Some(r)))
            }
            Some(Piece::Done(s)) => {
                let mut v = json!({"model": r.model, "created_at": now_rfc3339(),
                    "message": {"role": "assistant", "content": ""}, "done": true});
                final_fields(&mut v, &s, &r);
                with_logprobs(&mut v, &mut r, wanted);
                Some((v, None))
            }
            Some(Piece::Error(e)) => Some((json!({"error": e.message}), None)),
            None => None,
        }
    })))
}

/// `POST /api/embed` body (unknown fields as [`GenerateRequest`]).
#[derive(Deserialize)]
pub struct EmbedRequest {
    model: String,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    options: Option<Value>,
    #[serde(default)]
    keep_alive: Option<Value>,
    #[serde(default)]
    dimensions: Option<usize>,
    /// Fields this endpoint does not know.
    #[serde(flatten)]
    extra: Map<String, Value>,
}
lenient_request!(EmbedRequest);

/// `POST /api/embeddings` (legacy) body (unknown fields as [`GenerateRequest`]).
#[derive(Deserialize)]
pub struct EmbeddingsRequest {
    model: String,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    options: Option<Value>,
    #[serde(default)]
    keep_alive: Option<Value>,
    /// Fields this endpoint does not know.
    #[serde(flatten)]
    extra: Map<String, Value>,
}
lenient_request!(EmbeddingsRequest);

/// Inputs of an embedding request: a string or a list of strings.
pub fn embed_inputs(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) if a.len() > MAX_EMBED_INPUTS => Err(ApiError::bad_request(format!(
            "input holds {} texts; at most {MAX_EMBED_INPUTS} are embedded per request: send \
             the rest in further requests",
            a.len()
        ))),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "input must be a string or a list of strings, got {x}"
                    ))
                })
            })
            .collect(),
        Some(other) => Err(ApiError::bad_request(format!(
            "input must be a string or a list of strings, got {other}"
        ))),
    }
}

/// Texts one embedding request may hold, as many as the Anthropic and Responses APIs'
/// items. Ollama sets none (100,000 one-word inputs held a core for minutes and answered
/// 132 MB); OpenAI's is 2,048, but LangChain's `OllamaEmbeddings` sends a whole corpus in
/// one request.
pub const MAX_EMBED_INPUTS: usize = 10_000;

/// Sets its flag when dropped: the request future that owns it was dropped (the client
/// went away), so work done for it on the blocking pool can stop.
struct CancelOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Embeds `inputs`; returns vectors, tokens evaluated and load time. An input longer
/// than the context is cut to it (`truncate`) or refused with a 400 naming the limit;
/// `num_ctx` (the request's option) reloads the model with that context. A client that
/// goes away stops the work at the next input.
pub async fn embed_texts(
    state: &Arc<AppState>,
    model: &Named,
    keep_alive: Option<Option<Duration>>,
    num_ctx: Option<u32>,
    inputs: Vec<String>,
    truncate: bool,
) -> Result<(Vec<Vec<f32>>, usize, Duration), ApiError> {
    if let Some(target) = state.remotes.resolve(&state.sched, &model.name)? {
        let (vecs, count) = super::remote::embed(&state.remotes, &target, inputs, truncate).await?;
        return Ok((vecs, count, Duration::ZERO));
    }
    let (guard, load) = state.sched.acquire(&model.name, keep_alive, num_ctx).await?;
    let loaded = guard.loaded.clone();
    let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancelled.clone());
    let (vecs, count) = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut count = 0;
        for text in &inputs {
            if cancelled.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(ApiError::bad_request("the client went away"));
            }
            let mut tokens = loaded.model.tokenize(text, true, false)?;
            let n_ctx = loaded.num_ctx as usize;
            if tokens.len() > n_ctx {
                if !truncate {
                    return Err(ApiError::bad_request(format!(
                        "input of {} tokens exceeds the context length {n_ctx} (num_ctx); \
                         shorten it, raise num_ctx or allow truncate",
                        tokens.len()
                    )));
                }
                tracing::warn!(
                    "embedding input of {} tokens truncated to the context of {n_ctx}",
                    tokens.len()
                );
                tokens = truncate_keeping_affixes(&loaded.model, text, tokens, n_ctx)?;
            }
            if tokens.is_empty() {
                return Err(ApiError::bad_request("cannot embed an empty input"));
            }
            count += tokens.len();
            out.push(loaded.embed(&tokens)?);
        }
        Ok((out, count))
    })
    .await
    .map_err(|e| ApiError::internal(format!("embedding task failed: {e}")))??;
    drop(guard);
    Ok((vecs, count, load))
}

/// `tokens` (the text tokenized with the model's special tokens around it) cut to `n`
/// tokens from the end of the text, keeping what the tokenizer adds before and after it
/// (BERT's `[CLS]` and `[SEP]`), as sentence-transformers and Hugging Face tokenizers
/// truncate: an encoder embeds a cut text closed by its `[SEP]` differently from one cut
/// off mid-sequence.
fn truncate_keeping_affixes(
    model: &corral_plugin_host::Model,
    text: &str,
    mut tokens: Vec<u32>,
    n: usize,
) -> Result<Vec<u32>, ApiError> {
    let bare = model.tokenize(text, false, false)?;
    let extra = tokens.len().saturating_sub(bare.len());
    let before = (0..=extra).find(|&b| tokens.get(b..b + bare.len()) == Some(bare.as_slice()));
    match before {
        Some(b) if extra < n => {
            let after = tokens.split_off(b + bare.len());
            tokens.truncate(n - after.len());
            tokens.extend(after);
        }
        // Affixes not found around the text, or longer than the window: cut the end.
        _ => tokens.truncate(n),
    }
    Ok(tokens)
}

/// Cuts each embedding to its first `dimensions` values (as Ollama's and OpenAI's
/// `dimensions`; 0 or `None` keeps them all) and scales it to unit length. More than the
/// model has is a 400.
pub(super) fn shape_embeddings(
    vecs: &mut [Vec<f32>],
    dimensions: Option<usize>,
) -> Result<(), ApiError> {
    for v in vecs {
        match dimensions {
            Some(d) if d > v.len() => {
                return Err(ApiError::bad_request(format!(
                    "dimensions is {d}, but the model's embeddings have {} dimensions",
                    v.len()
                )));
            }
            Some(d) if d > 0 => v.truncate(d),
            _ => {}
        }
        normalize(v);
    }
    Ok(())
}

/// Scales `v` to unit length (what `/api/embed` and `/v1/embeddings` return, as Ollama's do).
pub(super) fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// `POST /api/embed`.
pub async fn embed(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    lenient::<EmbedRequest, ApiError, _>("/api/embed", &body, |req| embed_request(state, req)).await
}

async fn embed_request(state: Arc<AppState>, req: EmbedRequest) -> Result<Response, ApiError> {
    let t = std::time::Instant::now();
    let keep_alive = keep_alive_of(&req.keep_alive)?;
    let num_ctx = num_ctx_of(req.options.as_ref())?;
    let mut inputs = embed_inputs(req.input.as_ref())?;
    // As Ollama's: one empty string is no input (the model loads, nothing is embedded);
    // `[""]` stays an input.
    if matches!(req.input.as_ref(), Some(Value::String(s)) if s.is_empty()) {
        inputs.clear();
    }
    let model = state.sched.named(&req.model)?;
    if inputs.is_empty() {
        let (g, _) = state.sched.acquire(&model.name, keep_alive, num_ctx).await?;
        drop(g);
        return Ok(axum::Json(json!({"model": model.name, "embeddings": []})).into_response());
    }
    let (mut vecs, count, load) =
        embed_texts(&state, &model, keep_alive, num_ctx, inputs, req.truncate.unwrap_or(true))
            .await?;
    shape_embeddings(&mut vecs, req.dimensions)?;
    Ok(axum::Json(json!({
        "model": model.name,
        "embeddings": vecs,
        "total_duration": nanos(t.elapsed()),
        "load_duration": nanos(load),
        "prompt_eval_count": count,
    }))
    .into_response())
}

/// `POST /api/embeddings` (legacy: one prompt, not normalized).
pub async fn embeddings(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    lenient::<EmbeddingsRequest, ApiError, _>("/api/embeddings", &body, |req| {
        embeddings_request(state, req)
    })
    .await
}

async fn embeddings_request(
    state: Arc<AppState>,
    req: EmbeddingsRequest,
) -> Result<Response, ApiError> {
    let keep_alive = keep_alive_of(&req.keep_alive)?;
    let num_ctx = num_ctx_of(req.options.as_ref())?;
    let model = state.sched.named(&req.model)?;
    let prompt = req.prompt.unwrap_or_default();
    if prompt.is_empty() {
        let (g, _) = state.sched.acquire(&model.name, keep_alive, num_ctx).await?;
        drop(g);
        return Ok(axum::Json(json!({"embedding": []})).into_response());
    }
    let (mut vecs, _, _) =
        embed_texts(&state, &model, keep_alive, num_ctx, vec![prompt], true).await?;
    Ok(axum::Json(json!({"embedding": vecs.pop().unwrap_or_default()})).into_response())
}

/// A GGUF metadata value as JSON, typed (numbers, booleans, strings, arrays of them).
fn gguf_json(v: &corral_gguf::Value) -> Value {
    use corral_gguf::Value as G;
    match v {
        G::U8(x) => json!(x),
        G::I8(x) => json!(x),
        G::U16(x) => json!(x),
        G::I16(x) => json!(x),
        G::U32(x) => json!(x),
        G::I32(x) => json!(x),
        G::U64(x) => json!(x),
        G::I64(x) => json!(x),
        G::F32(x) => json!(x),
        G::F64(x) => json!(x),
        G::Bool(x) => json!(x),
        G::String(x) => json!(x),
        G::Array { values, .. } => Value::Array(values.iter().map(gguf_json).collect()),
    }
}

/// Details of a model file (`details` in tags/show/ps), and its metadata as `/api/show`'s
/// `model_info` (arrays of more than 5 values empty).
pub fn details_of(path: &std::path::Path) -> (Value, Value) {
    details_and_info(path, false)
}

/// [`details_of`], with every array of the metadata in full when `verbose`.
fn details_and_info(path: &std::path::Path, verbose: bool) -> (Value, Value) {
    let Ok(g) = corral_gguf::reader::GgufFile::open(path) else {
        return (
            json!({"parent_model": "", "format": path.extension().and_then(|e| e.to_str()).unwrap_or(""),
                   "family": "", "families": null, "parameter_size": "", "quantization_level": ""}),
            json!({}),
        );
    };
    let s = g.summary();
    let family = s.architecture.clone().unwrap_or_default();
    let details = json!({
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": s.parameter_count_short(),
        "quantization_level": s.quantization,
    });
    let mut info = serde_json::Map::new();
    for (k, v) in g.metadata() {
        // As Ollama's show: no name or chat template (the template has its own field),
        // and arrays of more than 5 values (the vocabulary) empty unless `verbose`.
        if k == "general.name" || k == "tokenizer.chat_template" {
            continue;
        }
        let val = match v {
            corral_gguf::Value::Array { values, .. } if values.len() > 5 && !verbose => json!([]),
            v => gguf_json(v),
        };
        info.insert(k.clone(), val);
    }
    info.insert("general.parameter_count".into(), json!(s.parameter_count));
    (details, Value::Object(info))
}

/// `GET /api/tags`.
pub async fn tags(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let Some(store) = state.sched.store.clone() else {
        return Ok(axum::Json(json!({"models": []})).into_response());
    };
    let models = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, ApiError> {
        let mut out = Vec::new();
        for m in store.list()? {
            let resolved = store.get(&m.name).ok();
            let details = match &resolved {
                Some(r) if r.config.is_remote() => json!({"format": "remote"}),
                Some(r) => details_of(&r.model_path).0,
                None => json!({}),
            };
            let mut entry = json!({
                "name": m.name.to_string(),
                "model": m.name.to_string(),
                "modified_at": rfc3339(m.modified),
                "size": m.size,
                "digest": m.digest.to_string().trim_start_matches("sha256:"),
                "details": details,
            });
            // Marked as Ollama marks its cloud models.
            if let Some(r) = resolved.filter(|r| r.config.is_remote()) {
                entry["remote_host"] = json!(r.config.remote_host);
                entry["remote_model"] = json!(r.config.remote_model);
            }
            out.push(entry);
        }
        Ok(out)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(axum::Json(json!({"models": models})).into_response())
}

/// `POST /api/show` body (unknown fields as [`GenerateRequest`]).
#[derive(Deserialize)]
pub struct ShowRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    verbose: Option<bool>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    options: Option<Value>,
    /// Fields this endpoint does not know.
    #[serde(flatten)]
    extra: Map<String, Value>,
}
lenient_request!(ShowRequest);

/// `POST /api/show`.
pub async fn show(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    lenient::<ShowRequest, ApiError, _>("/api/show", &body, |req| show_request(state, req)).await
}

async fn show_request(state: Arc<AppState>, req: ShowRequest) -> Result<Response, ApiError> {
    let _ = (&req.system, &req.template, &req.options);
    let verbose = req.verbose.unwrap_or(false);
    let name = req.model.or(req.name).unwrap_or_default();
    if let Some(target) = state.remotes.resolve(&state.sched, &name)? {
        return Ok(axum::Json(super::remote::show(&state.remotes, &target).await?).into_response());
    }
    let model = state.sched.resolve(&name)?;
    // What the loaded model can do (for files that are no GGUF, what their engine said).
    let key = crate::models::load_key(&name);
    let loaded = state
        .sched
        .loaded()
        .iter()
        .find(|l| crate::models::load_key(&l.model_ref.name) == key)
        .map(|l| l.capabilities.clone());
    let v = tokio::task::spawn_blocking(move || -> Result<Value, ApiError> {
        let (details, info) = details_and_info(&model.path, verbose);
        let resolved = model.resolved.as_deref();
        let (template, origin) = shown_template(&model);
        let capabilities =
            loaded.unwrap_or_else(|| model_capabilities(&model, &info, &template, None));
        let mut v = json!({
            "template": template,
            "template_origin": origin,
            "details": details,
            "model_info": info,
            "modified_at": rfc3339(model.modified),
            "capabilities": capabilities,
        });
        match resolved {
            Some(r) => {
                v["modelfile"] = json!(corral_registry::modelfile::to_modelfile(r));
                v["parameters"] = json!(corral_registry::modelfile::parameters_text(r));
                v["license"] = json!(r.license.join("\n"));
                if let Some(s) = &r.system {
                    v["system"] = json!(s);
                }
            }
            None => {
                v["modelfile"] = json!(format!("FROM {}\n", model.path.display()));
                v["parameters"] = json!("");
            }
        }
        Ok(v)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(axum::Json(v).into_response())
}

/// The TEMPLATE as stored (Ollama sends its Go template, not a translation); for a file,
/// its own template or the one chosen for it; and where it came from.
fn shown_template(model: &crate::models::ModelRef) -> (String, String) {
    match model.template_source.clone() {
        Some(t) => (t, "the Modelfile's TEMPLATE".to_string()),
        None => crate::prompt::file_template(&model.path).unwrap_or_default(),
    }
}

/// [`capabilities`] of a model whose metadata `details_of` read as `info`.
fn model_capabilities(
    model: &crate::models::ModelRef,
    info: &Value,
    template: &str,
    engine: Option<corral_backend_api::Capabilities>,
) -> Vec<&'static str> {
    let projectors = model.resolved.as_ref().is_some_and(|r| !r.projectors.is_empty());
    capabilities(info, template, projectors, engine)
}

/// What a loaded model can do, as `/api/show` lists it and requests are checked against
/// ([`capabilities`]), with `template` the chat template it renders with as written (a
/// Modelfile's TEMPLATE as stored: a Go template's translation always names `tools`;
/// for a file that is no GGUF, its engine's); reads the model file's metadata, so it is
/// computed at load.
pub(super) fn capabilities_of(
    model: &crate::models::ModelRef,
    template: &str,
    engine: corral_backend_api::Capabilities,
) -> Vec<&'static str> {
    let (_, info) = details_of(&model.path);
    model_capabilities(model, &info, template, Some(engine))
}

/// The `capabilities` of `/api/show`, decided as Ollama does:
///
/// - `embedding` for an embedding model: its GGUF metadata (`model_info`) has
///   `{arch}.pooling_type` or says `{arch}.attention.causal = false`; a file of another
///   format is one when its loaded engine declares embeddings and not generation;
/// - `completion` for every other (generative) model;
/// - `tools` when the chat template mentions tools (`tools` in Jinja, `.Tools` in Go);
/// - `thinking` when the template is a thinking model's
///   ([`corral_generation::thinking::template_thinks`], the rule generation uses);
/// - `vision` when the model has a projector layer or vision tensors (`{arch}.vision.*`,
///   `clip.*` metadata).
pub(super) fn capabilities(
    info: &Value,
    template: &str,
    projectors: bool,
    engine: Option<corral_backend_api::Capabilities>,
) -> Vec<&'static str> {
    use corral_backend_api::Capabilities as C;
    let arch = info.get("general.architecture").and_then(Value::as_str).unwrap_or("");
    let has = |k: &str| info.get(k).is_some_and(|v| !v.is_null());
    let embedding = if arch.is_empty() {
        engine.is_some_and(|c| c.contains(C::EMBEDDINGS) && !c.contains(C::GENERATION))
    } else {
        has(&format!("{arch}.pooling_type"))
            || info.get(format!("{arch}.attention.causal")) == Some(&Value::Bool(false))
    };
    let mut out = vec![if embedding { "embedding" } else { "completion" }];
    if !embedding && (template.contains("tools") || template.contains(".Tools")) {
        out.push("tools");
    }
    if !embedding && corral_generation::thinking::template_thinks(template) {
        out.push("thinking");
    }
    let vision_keys = info.as_object().is_some_and(|m| {
        m.keys().any(|k| k.starts_with("clip.") || k.starts_with(&format!("{arch}.vision.")))
    });
    if projectors || (!arch.is_empty() && vision_keys) {
        out.push("vision");
    }
    out
}

/// `GET /api/ps`.
pub async fn ps(State(state): State<Arc<AppState>>) -> Response {
    let models: Vec<Value> = state
        .sched
        .loaded()
        .iter()
        .map(|l| {
            let r = &l.model_ref;
            let expires = if l.inflight.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                None
            } else {
                *l.expires_wall.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
            };
            let expires_at = match expires {
                Some(t) => rfc3339(t),
                None => "2318-08-23T00:00:00Z".to_string(),
            };
            let mut v = json!({
                "name": r.name,
                "model": r.name,
                "size": l.size_estimate,
                "digest": r.digest,
                "details": details_of(&r.path).0,
                "expires_at": expires_at,
                "size_vram": l.size_vram,
                "context_length": l.num_ctx,
                "kv_cache_type": l.kv.cache_type.as_str(),
                "flash_attention": l.kv.flash_attention.as_str(),
                "kv_bytes_per_token": l.kv_bytes_per_token,
                "active_sequences": l.active(),
                "queued_requests": l.queued(),
                "num_parallel": l.engine.config.n_parallel,
                "isolation": l.model.plugin.backend.isolation(),
                "backend": l.model.plugin.id(),
            });
            // Where its layers are, when the engine says (several devices or machines).
            if let Some(p) = crate::rpc::Placement::of(&l.model.meta) {
                v["devices"] = p.to_json();
            }
            v
        })
        .collect();
    axum::Json(json!({"models": models})).into_response()
}

/// `GET /api/version`.
pub async fn version() -> Response {
    axum::Json(json!({"version": env!("CARGO_PKG_VERSION")})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_backend_api::Capabilities as C;

    #[test]
    fn capabilities_as_ollama_decides_them() {
        let llama = json!({"general.architecture": "llama"});
        assert_eq!(capabilities(&llama, "{{ .Prompt }}", false, None), ["completion"]);
        assert_eq!(
            capabilities(&llama, "{{ if .Tools }}x{{ end }}<think>", false, None),
            ["completion", "tools", "thinking"]
        );
        let bert = json!({"general.architecture": "bert", "bert.pooling_type": 1});
        assert_eq!(capabilities(&bert, "", false, None), ["embedding"]);
        let causal = json!({"general.architecture": "x", "x.attention.causal": false});
        assert_eq!(capabilities(&causal, "", false, None), ["embedding"]);
        let gemma = json!({"general.architecture": "gemma3", "gemma3.vision.block_count": 2});
        assert_eq!(capabilities(&gemma, "", false, None), ["completion", "vision"]);
        assert_eq!(capabilities(&llama, "", true, None), ["completion", "vision"]);
        // Not a GGUF: the loaded engine's declaration.
        assert_eq!(capabilities(&json!({}), "", false, Some(C::EMBEDDINGS)), ["embedding"]);
        let both = C::EMBEDDINGS | C::GENERATION;
        assert_eq!(capabilities(&json!({}), "", false, Some(both)), ["completion"]);
    }

    #[test]
    fn dimensions_cut_and_renormalize() {
        let mut v = vec![vec![3.0, 4.0, 12.0]];
        shape_embeddings(&mut v, Some(2)).unwrap();
        assert_eq!(v, [[0.6, 0.8]]);
        let mut v = vec![vec![3.0, 4.0]];
        shape_embeddings(&mut v, Some(0)).unwrap();
        assert_eq!(v, [[0.6, 0.8]]);
        let e = shape_embeddings(&mut [vec![1.0, 0.0]], Some(3)).unwrap_err();
        assert!(e.message.contains("2 dimensions"), "{}", e.message);
    }

    #[test]
    fn think_values() {
        assert_eq!(think_of(&None).unwrap(), None);
        assert_eq!(think_of(&Some(json!(true))).unwrap(), Some(Think::On));
        assert_eq!(think_of(&Some(json!(false))).unwrap(), Some(Think::Off));
        assert_eq!(think_of(&Some(json!("high"))).unwrap(), Some(Think::Level(Effort::High)));
        assert!(think_of(&Some(json!("minimal"))).is_err());
        assert!(think_of(&Some(json!(1))).is_err());
    }
}
