//! OpenAI's API: chat completions, completions, embeddings, models.

use std::sync::Arc;

use axum::{
    body::{Body, Bytes},
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use futures_util::stream;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    AppState,
    generation::{self, GenRequest, Piece, PromptSpec, Running, ToolChoice},
    logprobs,
    util::{ApiError, Ignored, Lenient, base64, lenient, unix_now},
};
use corral_generation::{
    structured::Grammar,
    thinking::{Effort, Think},
    toolcall::ToolCall,
};

use crate::{engine_loop::Stats, prompt::Message};

/// OpenAI-style error body: `{"error": {"message", "type", "code"}}`.
pub struct OaiError(pub ApiError);

impl From<ApiError> for OaiError {
    fn from(e: ApiError) -> Self {
        OaiError(e)
    }
}

impl IntoResponse for OaiError {
    fn into_response(self) -> Response {
        let kind = match self.0.status.as_u16() {
            400 | 413 => "invalid_request_error",
            404 => "not_found_error",
            503 => "server_busy",
            _ => "api_error",
        };
        // OpenAI's code for a model that does not exist.
        let code = if self.0.status == StatusCode::NOT_FOUND && self.0.message.starts_with("model ")
        {
            json!("model_not_found")
        } else {
            Value::Null
        };
        let body = json!({"error": {"message": self.0.message, "type": kind, "param": null, "code": code}});
        (self.0.status, axum::Json(body)).into_response()
    }
}

type OaiResult = Result<Response, OaiError>;

/// `POST /v1/chat/completions` body: OpenAI's fields, the sampling extensions of vLLM
/// and llama-server that corral honours, and anything else accepted and ignored (named
/// in the `X-Corral-Ignored-Fields` header). A known field of the wrong type is a 400.
#[derive(Deserialize)]
pub struct ChatCompletionRequest {
    model: String,
    messages: Vec<Value>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    max_completion_tokens: Option<i64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    frequency_penalty: Option<f64>,
    #[serde(default)]
    presence_penalty: Option<f64>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<u32>,
    #[serde(default)]
    logit_bias: Option<Value>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    store: Option<bool>,
    #[serde(default)]
    service_tier: Option<Value>,
    #[serde(default)]
    reasoning_effort: Option<Value>,
    #[serde(default)]
    modalities: Option<Value>,
    /// vLLM / llama-server: keep the `top_k` most likely tokens (0 or less: all).
    #[serde(default)]
    top_k: Option<i64>,
    /// vLLM / llama-server: drop tokens below `min_p` times the top one's probability.
    #[serde(default)]
    min_p: Option<f64>,
    /// vLLM: the repeat penalty (Ollama's `repeat_penalty`).
    #[serde(default)]
    repetition_penalty: Option<f64>,
    /// llama-server: the repeat penalty.
    #[serde(default)]
    repeat_penalty: Option<f64>,
    /// llama-server: how many last tokens the penalties look at.
    #[serde(default)]
    repeat_last_n: Option<i64>,
    /// llama-server: locally typical sampling.
    #[serde(default)]
    typical_p: Option<f64>,
    /// vLLM / llama-server: generate past the end-of-sequence token.
    #[serde(default)]
    ignore_eos: Option<bool>,
    /// llama-server: reuse a cached prompt prefix (default true).
    #[serde(default)]
    cache_prompt: Option<bool>,
    /// Fields this endpoint does not know: accepted and ignored.
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// `stream_options`.
#[derive(Deserialize, Default, Clone)]
pub struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
    /// Fields it does not know: accepted and ignored.
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// Implements [`Lenient`] for the generating requests (`stream_options` nested).
macro_rules! lenient_request {
    ($t:ty) => {
        impl Lenient for $t {
            fn extra(&self) -> &Map<String, Value> {
                &self.extra
            }
            fn nested(&self, ignored: &mut Ignored) {
                if let Some(so) = &self.stream_options {
                    ignored.add("stream_options.", so.extra.keys().cloned());
                }
            }
        }
    };
}
lenient_request!(ChatCompletionRequest);
lenient_request!(CompletionRequest);

/// `POST /v1/completions` body (fields as [`ChatCompletionRequest`]).
#[derive(Deserialize)]
pub struct CompletionRequest {
    model: String,
    prompt: Value,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    frequency_penalty: Option<f64>,
    #[serde(default)]
    presence_penalty: Option<f64>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    echo: Option<bool>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    logprobs: Option<u32>,
    #[serde(default)]
    logit_bias: Option<Value>,
    #[serde(default)]
    best_of: Option<u32>,
    /// vLLM / llama-server: keep the `top_k` most likely tokens (0 or less: all).
    #[serde(default)]
    top_k: Option<i64>,
    /// vLLM / llama-server: drop tokens below `min_p` times the top one's probability.
    #[serde(default)]
    min_p: Option<f64>,
    /// vLLM: the repeat penalty (Ollama's `repeat_penalty`).
    #[serde(default)]
    repetition_penalty: Option<f64>,
    /// llama-server: the repeat penalty.
    #[serde(default)]
    repeat_penalty: Option<f64>,
    /// llama-server: how many last tokens the penalties look at.
    #[serde(default)]
    repeat_last_n: Option<i64>,
    /// llama-server: locally typical sampling.
    #[serde(default)]
    typical_p: Option<f64>,
    /// vLLM / llama-server: generate past the end-of-sequence token.
    #[serde(default)]
    ignore_eos: Option<bool>,
    /// llama-server: reuse a cached prompt prefix (default true).
    #[serde(default)]
    cache_prompt: Option<bool>,
    /// Fields this endpoint does not know: accepted and ignored.
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// The sampling extensions of vLLM and llama-server a request carried, in the terms of
/// corral's options. Both request types declare the fields themselves rather than
/// flattening one shared struct: serde's errors from inside a flattened struct do not name
/// the field (`invalid type: string "x", expected i64`, where a client needs `top_k`).
struct Extensions {
    top_k: Option<i64>,
    min_p: Option<f64>,
    repeat_penalty: Option<f64>,
    repeat_last_n: Option<i64>,
    typical_p: Option<f64>,
    ignore_eos: bool,
    cache_prompt: bool,
}

/// [`Extensions`] from the fields of a request type.
macro_rules! extensions_of {
    ($r:expr) => {
        Extensions {
            top_k: $r.top_k,
            min_p: $r.min_p,
            repeat_penalty: $r.repetition_penalty.or($r.repeat_penalty),
            repeat_last_n: $r.repeat_last_n,
            typical_p: $r.typical_p,
            ignore_eos: $r.ignore_eos.unwrap_or(false),
            cache_prompt: $r.cache_prompt.unwrap_or(true),
        }
    };
}

impl Extensions {
    /// Adds the sampling options to `o` (Ollama's names; ranges are checked with the
    /// rest). vLLM's `top_k: -1` (and any value up to 0) means all tokens: 0.
    fn apply(&self, o: &mut Map<String, Value>) {
        if let Some(k) = self.top_k {
            o.insert("top_k".into(), json!(k.clamp(0, i64::from(i32::MAX))));
        }
        if let Some(p) = self.min_p {
            o.insert("min_p".into(), json!(p));
        }
        if let Some(p) = self.repeat_penalty {
            o.insert("repeat_penalty".into(), json!(p));
        }
        if let Some(n) = self.repeat_last_n {
            o.insert("repeat_last_n".into(), json!(n));
        }
        if let Some(p) = self.typical_p {
            o.insert("typical_p".into(), json!(p));
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn options_json(
    max_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
    stop: &Option<Value>,
    frequency_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    ext: &Extensions,
) -> Result<Value, ApiError> {
    let mut o = Map::new();
    ext.apply(&mut o);
    if let Some(m) = max_tokens {
        if m < 1 {
            return Err(ApiError::bad_request(format!("max_tokens must be at least 1, got {m}")));
        }
        o.insert("num_predict".into(), json!(m.min(i64::from(i32::MAX))));
    }
    if let Some(t) = temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::bad_request(format!("temperature must be in [0, 2], got {t}")));
        }
        o.insert("temperature".into(), json!(t));
    }
    if let Some(p) = top_p {
        o.insert("top_p".into(), json!(p));
    }
    if let Some(s) = seed {
        o.insert("seed".into(), json!(s));
    }
    match stop {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            o.insert("stop".into(), json!([s]));
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_string) && a.len() <= 16 => {
            o.insert("stop".into(), json!(a));
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "stop must be a string or a list of at most 16 strings, got {other}"
            )));
        }
    }
    if let Some(f) = frequency_penalty {
        o.insert("frequency_penalty".into(), json!(f));
    }
    if let Some(p) = presence_penalty {
        o.insert("presence_penalty".into(), json!(p));
    }
    Ok(Value::Object(o))
}

fn grammar_of_response_format(rf: Option<&Value>) -> Result<Option<Arc<Grammar>>, ApiError> {
    let Some(rf) = rf else { return Ok(None) };
    let bad = |m: String| ApiError::bad_request(m);
    match rf.get("type").and_then(Value::as_str) {
        None | Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Arc::new(Grammar::json_object()))),
        Some("json_schema") => {
            let schema = rf.get("json_schema").and_then(|j| j.get("schema")).ok_or_else(|| {
                bad("response_format json_schema needs json_schema.schema".into())
            })?;
            Grammar::from_schema(schema).map(|g| Some(Arc::new(g))).map_err(|e| bad(e.to_string()))
        }
        Some(t) => Err(bad(format!(
            "response_format.type {t:?} is not supported (text, json_object, json_schema)"
        ))),
    }
}

/// Message content: a string or a list of parts (`{"type":"text","text":...}`).
fn message_of(i: usize, v: &Value) -> Result<Message, ApiError> {
    let role = v
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request(format!("messages[{i}] has no role")))?;
    let role = if role == "developer" { "system" } else { role };
    if !matches!(role, "system" | "user" | "assistant" | "tool") {
        return Err(ApiError::bad_request(format!("messages[{i}]: unknown role {role:?}")));
    }
    let content = match v.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut s = String::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => s.push_str(p.get("text").and_then(Value::as_str).unwrap_or("")),
                    Some(t) => {
                        return Err(ApiError::bad_request(format!(
                            "messages[{i}]: content part type {t:?} is not supported"
                        )));
                    }
                    None => {
                        return Err(ApiError::bad_request(format!(
                            "messages[{i}]: content part without type"
                        )));
                    }
                }
            }
            s
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "messages[{i}].content must be a string or parts, got {other}"
            )));
        }
    };
    let mut m = Message::new(role, content);
    if let Some(tc) = v.get("tool_calls").and_then(Value::as_array) {
        // OpenAI sends arguments as a JSON string; templates expect an object (they
        // `tojson` it themselves), as Ollama's compatibility layer hands them over.
        let mut calls = tc.clone();
        for (j, call) in calls.iter_mut().enumerate() {
            let args = call.get_mut("function").and_then(|f| f.get_mut("arguments"));
            if let Some(a) = args
                && let Value::String(text) = a
            {
                *a = match serde_json::from_str::<Value>(text) {
                    Ok(obj @ Value::Object(_)) => obj,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "messages[{i}].tool_calls[{j}].function.arguments is not a JSON object"
                        )));
                    }
                };
            }
        }
        m.tool_calls = Some(calls);
    }
    if let Some(id) = v.get("tool_call_id") {
        m.extra.insert("tool_call_id".into(), id.clone());
    }
    Ok(m)
}

fn finish_reason(s: &Stats) -> &'static str {
    s.done_reason.map_or("stop", corral_generation::DoneReason::as_str)
}

fn usage(s: &Stats) -> Value {
    json!({
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.eval_count,
        "total_tokens": s.prompt_tokens + s.eval_count,
        "prompt_tokens_details": {"cached_tokens": s.cached_tokens},
    })
}

fn sse<S>(s: S) -> Response
where
    S: futures_util::Stream<Item = String> + Send + 'static,
{
    use futures_util::StreamExt;
    let body = s.map(|line| Ok::<Bytes, std::io::Error>(Bytes::from(line)));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn data(v: &Value) -> String {
    format!("data: {v}\n\n")
}

struct SseState {
    r: Option<Running>,
    id: String,
    created: u64,
    chat: bool,
    usage: bool,
    queue: std::collections::VecDeque<String>,
    sent_role: bool,
    /// The model called tools: the finish reason is `tool_calls`.
    called_tools: bool,
    /// Log-probabilities asked for: chunks carry those of their tokens.
    logprobs: bool,
    /// Characters streamed so far (`text_offset` of the legacy completions form).
    offset: usize,
}

/// The `logprobs` of a chunk or answer: chat's `{content: [...]}` or completions'
/// legacy form; `null` when not asked for.
fn logprobs_value(r: Option<&mut Running>, wanted: bool, chat: bool, offset: usize) -> Value {
    match r {
        Some(r) if wanted => {
            let lps = r.take_logprobs();
            if chat {
                json!({"content": logprobs::entries(&lps)})
            } else {
                logprobs::legacy(&lps, offset)
            }
        }
        _ => Value::Null,
    }
}

/// The request's `logit_bias` into the options (the sampler adds it to the logits;
/// the options parser checks its shape and range, the sampler its token ids).
fn with_logit_bias(mut options: Value, bias: Option<Value>) -> Value {
    if let (Some(o), Some(b)) = (options.as_object_mut(), bias.filter(|b| !b.is_null())) {
        o.insert("logit_bias".into(), b);
    }
    options
}

/// Tool calls as OpenAI answers them (arguments as a JSON string); `index` for stream
/// deltas.
fn openai_tool_calls(calls: &[ToolCall], with_index: bool) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut v = json!({"id": generation::new_id("call_"), "type": "function",
                "function": {"name": c.name, "arguments": Value::Object(c.arguments.clone()).to_string()}});
            if with_index {
                v["index"] = json!(i);
            }
            v
        })
        .collect()
}

fn chunk(st: &SseState, delta_text: Option<&str>, finish: Option<&str>) -> Value {
    let model = st.r.as_ref().map(|r| r.model.clone()).unwrap_or_default();
    if st.chat {
        let mut delta = json!({});
        if !st.sent_role {
            delta["role"] = json!("assistant");
        }
        if let Some(t) = delta_text {
            delta["content"] = json!(t);
        }
        json!({"id": st.id, "object": "chat.completion.chunk", "created": st.created, "model": model,
               "system_fingerprint": "fp_corral",
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    } else {
        json!({"id": st.id, "object": "text_completion", "created": st.created, "model": model,
               "choices": [{"index": 0, "text": delta_text.unwrap_or(""), "logprobs": null, "finish_reason": finish}]})
    }
}

fn stream_response(
    running: Running,
    chat: bool,
    include_usage: bool,
    wanted_logprobs: bool,
) -> Response {
    let st = SseState {
        r: Some(running),
        id: generation::new_id(if chat { "chatcmpl-" } else { "cmpl-" }),
        created: unix_now(),
        chat,
        usage: include_usage,
        queue: Default::default(),
        sent_role: false,
        called_tools: false,
        logprobs: wanted_logprobs,
        offset: 0,
    };
    sse(stream::unfold(st, |mut st| async move {
        if let Some(line) = st.queue.pop_front() {
            return Some((line, st));
        }
        let r = st.r.as_mut()?;
        match r.next().await {
            Some(Piece::Text(t)) => {
                let mut v = chunk(&st, Some(&t), None);
                v["choices"][0]["logprobs"] =
                    logprobs_value(st.r.as_mut(), st.logprobs, st.chat, st.offset);
                st.offset += t.chars().count();
                st.sent_role = true;
                Some((data(&v), st))
            }
            Some(Piece::Thinking(t)) => {
                let mut v = chunk(&st, None, None);
                v["choices"][0]["delta"]["reasoning"] = json!(t);
                st.sent_role = true;
                Some((data(&v), st))
            }
            Some(Piece::ToolCalls(calls)) => {
                let mut v = chunk(&st, None, None);
                v["choices"][0]["delta"]["tool_calls"] = openai_tool_calls(&calls, true);
                st.sent_role = true;
                st.called_tools = true;
                Some((data(&v), st))
            }
            Some(Piece::Done(s)) => {
                let reason = if st.called_tools { "tool_calls" } else { finish_reason(&s) };
                let mut last = chunk(&st, None, Some(reason));
                last["choices"][0]["logprobs"] =
                    logprobs_value(st.r.as_mut(), st.logprobs, st.chat, st.offset);
                if st.usage {
                    let model = st.r.as_ref().map(|r| r.model.clone()).unwrap_or_default();
                    let object = if st.chat { "chat.completion.chunk" } else { "text_completion" };
                    st.queue.push_back(data(
                        &json!({"id": st.id, "object": object, "created": st.created,
                        "model": model, "choices": [], "usage": usage(&s)}),
                    ));
                }
                st.queue.push_back("data: [DONE]\n\n".to_string());
                st.r = None;
                Some((data(&last), st))
            }
            Some(Piece::Error(e)) => {
                st.r = None;
                st.queue.push_back("data: [DONE]\n\n".to_string());
                Some((data(&json!({"error": {"message": e.message, "type": "api_error"}})), st))
            }
            None => None,
        }
    }))
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    lenient::<ChatCompletionRequest, OaiError, _>("/v1/chat/completions", &body, |req| {
        chat_completions_request(state, req)
    })
    .await
}

async fn chat_completions_request(
    state: Arc<AppState>,
    mut req: ChatCompletionRequest,
) -> OaiResult {
    let _ = (&req.parallel_tool_calls, &req.user);
    let logprobs = logprobs::requested(req.logprobs, req.top_logprobs, true)?;
    let _ = (&req.metadata, &req.store, &req.service_tier, &req.modalities);
    // As Ollama's compatibility layer: an effort asks for thinking (and reaches the
    // template as `reasoning_effort`), "none" turns it off.
    let think = match &req.reasoning_effort {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "none" => Some(Think::Off),
        Some(Value::String(s)) if Effort::of_openai(s).is_some() => {
            Effort::of_openai(s).map(Think::Level)
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "reasoning_effort must be \"minimal\", \"low\", \"medium\", \"high\" or \
                 \"none\", not {other}"
            ))
            .into());
        }
    };
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request("n must be 1").into());
    }
    let messages = req
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| message_of(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    if messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty").into());
    }
    let tools = generation::chat_tools(req.tools.as_deref())?;
    let choice = ToolChoice::of_openai(req.tool_choice.as_ref())?;
    let grammar = choice.grammar_or(tools.as_deref(), || {
        grammar_of_response_format(req.response_format.as_ref())
    })?;
    let ext = extensions_of!(req);
    let options = options_json(
        req.max_completion_tokens.or(req.max_tokens),
        req.temperature,
        req.top_p,
        req.seed,
        &req.stop,
        req.frequency_penalty,
        req.presence_penalty,
        &ext,
    )?;
    let options = with_logit_bias(options, req.logit_bias.take());
    let model = state.sched.named(&req.model)?;
    // tool_choice "none": the tools stay in the prompt, but the output is not parsed.
    let parse_tools = choice != ToolChoice::None;
    let running = generation::start(
        &state,
        GenRequest {
            model: model.name.clone(),
            keep_alive: None,
            options: Some(options),
            grammar,
            shift: true,
            truncate: true,
            logprobs,
            think,
            ignore_eos: ext.ignore_eos,
            cache_prompt: ext.cache_prompt,
            // A final assistant message is continued (a prefill), as llama-server does.
            prompt: PromptSpec::Chat { messages, tools: tools.clone(), continue_final: true },
        },
    )
    .await?
    .with_tools(tools.as_deref().filter(|_| parse_tools));
    if req.stream == Some(true) {
        let include = req.stream_options.clone().unwrap_or_default().include_usage;
        return Ok(stream_response(running, true, include, logprobs.is_some()));
    }
    let (c, mut r) = running.collect().await?;
    let s = c.stats;
    let lp = logprobs_value(Some(&mut r), logprobs.is_some(), true, 0);
    let (mut message, reason) = if c.calls.is_empty() {
        (json!({"role": "assistant", "content": c.text}), finish_reason(&s))
    } else {
        let content = if c.text.is_empty() { Value::Null } else { json!(c.text) };
        (
            json!({"role": "assistant", "content": content,
                   "tool_calls": openai_tool_calls(&c.calls, false)}),
            "tool_calls",
        )
    };
    if !c.thinking.is_empty() {
        message["reasoning"] = json!(c.thinking);
    }
    Ok(axum::Json(json!({
        "id": generation::new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": unix_now(),
        "model": r.model,
        "system_fingerprint": "fp_corral",
        "choices": [{"index": 0, "message": message,
                     "logprobs": lp, "finish_reason": reason}],
        "usage": usage(&s),
    }))
    .into_response())
}

/// `POST /v1/completions`.
pub async fn completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    lenient::<CompletionRequest, OaiError, _>("/v1/completions", &body, |req| {
        completions_request(state, req)
    })
    .await
}

async fn completions_request(state: Arc<AppState>, mut req: CompletionRequest) -> OaiResult {
    let _ = &req.user;
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request("n must be 1").into());
    }
    if req.best_of.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request("best_of must be 1").into());
    }
    if let Some(n) = req.logprobs.filter(|&n| n > 20) {
        return Err(ApiError::bad_request(format!(
            "logprobs is {n}, but it must be between 0 and 20"
        ))
        .into());
    }
    let logprobs = logprobs::requested(req.logprobs.map(|_| true), req.logprobs, false)?;
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request("suffix is not supported").into());
    }
    // A text, or token ids (OpenAI's and llama-server's other shape: `[1, 2, 3]`, or one
    // such list in a list), sent to the model as they are.
    let token_ids = |a: &[Value]| -> Option<Vec<u32>> {
        a.iter().map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok())).collect()
    };
    let (prompt, tokens) = match &req.prompt {
        Value::String(s) => (s.clone(), Vec::new()),
        Value::Array(a) if a.len() == 1 && a[0].is_string() => {
            (a[0].as_str().unwrap_or("").to_string(), Vec::new())
        }
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_number) => match token_ids(a) {
            Some(t) => (String::new(), t),
            None => {
                return Err(ApiError::bad_request(
                    "a prompt of token ids holds whole numbers from 0 to 4294967295",
                )
                .into());
            }
        },
        Value::Array(a)
            if a.len() == 1
                && a[0]
                    .as_array()
                    .is_some_and(|t| !t.is_empty() && t.iter().all(Value::is_number)) =>
        {
            match a[0].as_array().and_then(|t| token_ids(t)) {
                Some(t) => (String::new(), t),
                None => {
                    return Err(ApiError::bad_request(
                        "a prompt of token ids holds whole numbers from 0 to 4294967295",
                    )
                    .into());
                }
            }
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "prompt must be a string or a list of token ids (one prompt per request), got \
                 {}",
                match other {
                    Value::Array(a) => format!("a list of {} items", a.len()),
                    Value::Object(_) => "an object".into(),
                    v => v.to_string().chars().take(64).collect(),
                }
            ))
            .into());
        }
    };
    if prompt.is_empty() && tokens.is_empty() {
        return Err(ApiError::bad_request("prompt must not be empty").into());
    }
    if !tokens.is_empty() && req.echo == Some(true) {
        return Err(ApiError::bad_request("echo needs a text prompt, not token ids").into());
    }
    let ext = extensions_of!(req);
    let options = options_json(
        req.max_tokens,
        req.temperature,
        req.top_p,
        req.seed,
        &req.stop,
        req.frequency_penalty,
        req.presence_penalty,
        &ext,
    )?;
    let options = with_logit_bias(options, req.logit_bias.take());
    let model = state.sched.named(&req.model)?;
    let running = generation::start(
        &state,
        GenRequest {
            model: model.name.clone(),
            keep_alive: None,
            options: Some(options),
            grammar: None,
            shift: true,
            truncate: true,
            logprobs,
            think: None,
            ignore_eos: ext.ignore_eos,
            cache_prompt: ext.cache_prompt,
            prompt: PromptSpec::Completion {
                prompt: prompt.clone(),
                system: None,
                raw: true,
                context: tokens,
                template: None,
            },
        },
    )
    .await?;
    if req.stream == Some(true) {
        let include = req.stream_options.clone().unwrap_or_default().include_usage;
        return Ok(stream_response(running, false, include, logprobs.is_some()));
    }
    let (c, mut r) = running.collect().await?;
    let (text, s) = (c.text, c.stats);
    let echoed = if req.echo == Some(true) { prompt.chars().count() } else { 0 };
    let lp = logprobs_value(Some(&mut r), logprobs.is_some(), false, echoed);
    let text = if req.echo == Some(true) { format!("{prompt}{text}") } else { text };
    Ok(axum::Json(json!({
        "id": generation::new_id("cmpl-"),
        "object": "text_completion",
        "created": unix_now(),
        "model": r.model,
        "choices": [{"index": 0, "text": text, "logprobs": lp, "finish_reason": finish_reason(&s)}],
        "usage": usage(&s),
    }))
    .into_response())
}

/// `POST /v1/embeddings` body (unknown fields accepted and ignored).
#[derive(Deserialize)]
pub struct EmbeddingRequest {
    model: String,
    input: Value,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
    #[serde(default)]
    user: Option<String>,
    /// Fields this endpoint does not know.
    #[serde(flatten)]
    extra: Map<String, Value>,
}

impl Lenient for EmbeddingRequest {
    fn extra(&self) -> &Map<String, Value> {
        &self.extra
    }
}

/// `POST /v1/embeddings`.
pub async fn embeddings(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    lenient::<EmbeddingRequest, OaiError, _>("/v1/embeddings", &body, |req| {
        embeddings_request(state, req)
    })
    .await
}

async fn embeddings_request(state: Arc<AppState>, req: EmbeddingRequest) -> OaiResult {
    let _ = &req.user;
    let b64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(f) => {
            return Err(
                ApiError::bad_request(format!("encoding_format {f:?}: float or base64")).into()
            );
        }
    };
    let inputs = super::ollama::embed_inputs(Some(&req.input))?;
    if inputs.is_empty() {
        return Err(ApiError::bad_request("input must not be empty").into());
    }
    let model = state.sched.named(&req.model)?;
    let (mut vecs, count, _) =
        super::ollama::embed_texts(&state, &model, None, None, inputs, true).await?;
    // As Ollama's /v1/embeddings (which goes through /api/embed): unit vectors, whatever
    // the engine's pooling gave, cut to `dimensions`.
    super::ollama::shape_embeddings(&mut vecs, req.dimensions)?;
    let data: Vec<Value> = vecs
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let emb = if b64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64(&bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "embedding": emb, "index": i})
        })
        .collect();
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "model": model.name,
        "usage": {"prompt_tokens": count, "total_tokens": count},
    }))
    .into_response())
}

/// A model in the shapes of both model lists that share `/v1/models`: OpenAI's (`object`,
/// `created`, `owned_by`) and Anthropic's (`type`, `display_name`, `created_at`), so that
/// either SDK reads its fields.
fn model_obj(name: &str, created: u64) -> Value {
    let at = super::util::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(created));
    json!({"id": name, "object": "model", "created": created, "owned_by": "library",
           "type": "model", "display_name": name, "created_at": at})
}

/// A list of models in both APIs' shapes (see [`model_obj`]): Anthropic's pages are
/// `has_more`, `first_id` and `last_id`.
fn model_list(data: Vec<Value>) -> Value {
    let first = data.first().map_or(Value::Null, |m| m["id"].clone());
    let last = data.last().map_or(Value::Null, |m| m["id"].clone());
    json!({"object": "list", "data": data, "has_more": false, "first_id": first, "last_id": last})
}

/// `GET /v1/models`.
pub async fn models(State(state): State<Arc<AppState>>) -> OaiResult {
    let Some(store) = state.sched.store.clone() else {
        return Ok(axum::Json(model_list(Vec::new())).into_response());
    };
    let list = tokio::task::spawn_blocking(move || {
        store.list().map(|l| {
            l.into_iter()
                .map(|m| {
                    // A remote model is owned by its remote.
                    let remote = store
                        .get(&m.name)
                        .ok()
                        .filter(|r| r.config.is_remote())
                        .map(|r| r.config.remote_host);
                    (m, remote)
                })
                .collect::<Vec<_>>()
        })
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(ApiError::from)?;
    let data: Vec<Value> = list
        .iter()
        .map(|(m, remote)| {
            let t = m.modified.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let mut o = model_obj(&m.name.to_string(), t);
            if let Some(r) = remote {
                o["owned_by"] = json!(r);
                o["remote_host"] = json!(r);
            }
            o
        })
        .collect();
    Ok(axum::Json(model_list(data)).into_response())
}

/// `GET /v1/models/{model}`.
pub async fn model(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> OaiResult {
    if let Some(t) = state.remotes.resolve(&state.sched, &name)? {
        let mut o = model_obj(&t.name, 0);
        o["owned_by"] = json!(t.remote);
        return Ok(axum::Json(o).into_response());
    }
    let r = state.sched.resolve(&name)?;
    let t = r.modified.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Ok(axum::Json(model_obj(&r.name, t)).into_response())
}
