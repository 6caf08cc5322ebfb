//! Anthropic's Messages API: `POST /v1/messages` and `POST /v1/messages/count_tokens`.
//!
//! A request becomes a chat for the model's template: `system` first, user and assistant
//! turns as they come, `tool_use` blocks as the assistant's tool calls and `tool_result`
//! blocks as tool messages; `tools` become function tools, and a `tool_choice` of `any`
//! or `tool` forces a call through the structured-output constraint, as
//! `output_config.format` (`json_schema`) constrains the answer. The answer comes
//! back as content blocks (`thinking`, `text`, `tool_use`), or as Anthropic's event
//! stream ([`BlockSequencer`] decides the events). Errors use Anthropic's shape
//! ([`AnthropicError`]), mid-stream too (an `error` event). Unknown top-level fields are
//! ignored (logged at debug level).

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Bytes,
    extract::{Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};
use corral_generation::{DoneReason, structured::Grammar, toolcall::ToolCall};
use futures_util::stream;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    AppState,
    generation::{self, GenRequest, MAX_TOOLS, Piece, Running, SamplingFields, ToolChoice},
    util::{ApiError, parse_body_lenient},
};
use crate::{engine_loop::Stats, prompt::Message};

/// Most messages one request may carry.
const MAX_MESSAGES: usize = 10_000;
/// Most content blocks one message (or `system`, or a tool result) may carry.
const MAX_BLOCKS: usize = 10_000;

/// An error in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`.
pub struct AnthropicError(pub ApiError);

impl From<ApiError> for AnthropicError {
    fn from(e: ApiError) -> Self {
        AnthropicError(e)
    }
}

/// Anthropic's error type for an HTTP status.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 408 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// The JSON body of an Anthropic error.
pub fn error_body(status: StatusCode, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        let mut resp =
            (self.0.status, axum::Json(error_body(self.0.status, &self.0.message))).into_response();
        resp.extensions_mut().insert(AnthropicShaped);
        resp
    }
}

/// Marks a response already in Anthropic's error shape.
#[derive(Clone, Copy)]
struct AnthropicShaped;

/// Middleware for the Anthropic routes: errors made before a handler ran (the body
/// limit, a wrong method) are given Anthropic's shape too.
pub async fn error_shape(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error())
        || resp.extensions().get::<AnthropicShaped>().is_some()
    {
        return resp;
    }
    let body = axum::body::to_bytes(resp.into_body(), 64 << 10).await.unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    AnthropicError(ApiError { status, message }).into_response()
}

type AnthropicResult = Result<Response, AnthropicError>;

/// `POST /v1/messages` (and `count_tokens`) body. Unknown fields are accepted.
#[derive(Deserialize)]
pub struct MessagesRequest {
    model: String,
    messages: Vec<Value>,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    system: Option<Value>,
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    top_k: Option<i64>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    thinking: Option<Value>,
    #[serde(default)]
    output_config: Option<Value>,
    #[serde(default)]
    stream: Option<bool>,
}

/// The fields of [`MessagesRequest`]; others are ignored.
const KNOWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "metadata",
    "tools",
    "tool_choice",
    "thinking",
    "output_config",
    "stream",
];

/// The request of `body`; its unknown fields are logged and ignored.
fn parse_request(body: &[u8]) -> Result<MessagesRequest, ApiError> {
    let (req, unknown) = parse_body_lenient(body, KNOWN_FIELDS)?;
    generation::log_ignored_fields("anthropic", &unknown);
    Ok(req)
}

/// Anthropic's `tool_choice`: `{"type": "auto" | "any" | "tool" | "none"}`.
fn tool_choice_of(v: Option<&Value>) -> Result<ToolChoice, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(ToolChoice::Auto) };
    match v.get("type").and_then(Value::as_str) {
        Some("auto") => Ok(ToolChoice::Auto),
        Some("any") => Ok(ToolChoice::Required),
        Some("none") => Ok(ToolChoice::None),
        Some("tool") => match v.get("name").and_then(Value::as_str) {
            Some(name) => Ok(ToolChoice::Named(name.to_string())),
            None => Err(ApiError::bad_request("tool_choice.name: a string is required")),
        },
        _ => Err(ApiError::bad_request(format!(
            "tool_choice must be {{\"type\": \"auto\" | \"any\" | \"tool\" | \"none\"}}, got {v}"
        ))),
    }
}

/// What `thinking` asks: `Some(true)` enabled, `Some(false)` disabled.
/// `budget_tokens` must be below `max_tokens`, as Anthropic's API requires (the budget is
/// part of the answer's tokens).
fn thinking_of(v: Option<&Value>, max_tokens: Option<i64>) -> Result<Option<bool>, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(None) };
    match v.get("type").and_then(Value::as_str) {
        Some("enabled") => match v.get("budget_tokens") {
            None => Ok(Some(true)),
            Some(b)
                if b.as_u64()
                    .zip(max_tokens)
                    .is_some_and(|(b, max)| i64::try_from(b).is_ok_and(|b| b >= max)) =>
            {
                Err(ApiError::bad_request(format!(
                    "max_tokens must be greater than thinking.budget_tokens ({b})"
                )))
            }
            Some(b) if b.as_u64().is_some_and(|b| b > 0) => Ok(Some(true)),
            Some(b) => Err(ApiError::bad_request(format!(
                "thinking.budget_tokens must be a positive integer, got {b}"
            ))),
        },
        // The model decides when to think: a thinking model thinks.
        Some("adaptive" | "between_tools") => Ok(Some(true)),
        Some("disabled") => Ok(Some(false)),
        _ => Err(ApiError::bad_request(format!(
            "thinking must be {{\"type\": \"enabled\", \"budget_tokens\": N}}, \
             {{\"type\": \"adaptive\"}} or {{\"type\": \"disabled\"}}, got {v}"
        ))),
    }
}

/// Anthropic tools (`name`, `description`, `input_schema`) as function tools.
fn tools_of(tools: Option<&[Value]>) -> Result<Option<Vec<Value>>, ApiError> {
    let Some(tools) = tools.filter(|t| !t.is_empty()) else { return Ok(None) };
    if tools.len() > MAX_TOOLS {
        return Err(ApiError::bad_request(format!("at most {MAX_TOOLS} tools are accepted")));
    }
    generation::check_tools_size(tools)?;
    let mut out = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        match t.get("type").and_then(Value::as_str) {
            None | Some("custom") => {}
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "tools[{i}]: tool type {other:?} is not supported (only client tools with \
                     name and input_schema are)"
                )));
            }
        }
        let name =
            t.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()).ok_or_else(|| {
                ApiError::bad_request(format!("tools[{i}].name: a name is required"))
            })?;
        let schema = t.get("input_schema").filter(|s| s.is_object()).ok_or_else(|| {
            ApiError::bad_request(format!(
                "tools[{i}].input_schema: a JSON schema object is required"
            ))
        })?;
        let mut function = json!({"name": name, "parameters": schema});
        if let Some(d) = t.get("description").and_then(Value::as_str) {
            function["description"] = json!(d);
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(Some(out))
}

/// The text of `system`: a string or a list of text blocks.
fn system_text(v: &Value) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            if blocks.len() > MAX_BLOCKS {
                return Err(ApiError::bad_request("system has too many blocks"));
            }
            let mut parts = Vec::with_capacity(blocks.len());
            for (j, b) in blocks.iter().enumerate() {
                match (b.get("type").and_then(Value::as_str), b.get("text").and_then(Value::as_str))
                {
                    (Some("text"), Some(t)) => parts.push(t),
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "system[{j}] must be a text block ({{\"type\": \"text\", \"text\": ...}})"
                        )));
                    }
                }
            }
            Ok(parts.join("\n\n"))
        }
        other => Err(ApiError::bad_request(format!(
            "system must be a string or a list of text blocks, got {other}"
        ))),
    }
}

/// The base64 data of an image block (`source.type: "base64"`).
fn image_data(where_: &str, block: &Value) -> Result<String, ApiError> {
    let source = block.get("source");
    match source.and_then(|s| s.get("type")).and_then(Value::as_str) {
        Some("base64") => source
            .and_then(|s| s.get("data"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| ApiError::bad_request(format!("{where_}: source.data is required"))),
        _ => {
            Err(ApiError::bad_request(format!("{where_}: only base64 image sources are supported")))
        }
    }
}

/// The text (and images) of a `tool_result`'s `content`: a string or blocks.
fn tool_result_content(where_: &str, v: Option<&Value>) -> Result<(String, Vec<String>), ApiError> {
    match v {
        None | Some(Value::Null) => Ok((String::new(), Vec::new())),
        Some(Value::String(s)) => Ok((s.clone(), Vec::new())),
        Some(Value::Array(blocks)) if blocks.len() <= MAX_BLOCKS => {
            let (mut text, mut images) = (Vec::new(), Vec::new());
            for (k, b) in blocks.iter().enumerate() {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => text.push(b.get("text").and_then(Value::as_str).unwrap_or("")),
                    Some("image") => images.push(image_data(&format!("{where_}[{k}]"), b)?),
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "{where_}[{k}]: block type {} is not supported in a tool result",
                            generation::shown_type(other)
                        )));
                    }
                }
            }
            Ok((text.join("\n"), images))
        }
        Some(other) => Err(ApiError::bad_request(format!(
            "{where_} must be a string or a list of blocks, got {other}"
        ))),
    }
}

/// The request's conversation as chat messages: `system` first, each `tool_result` as a
/// tool message (before the user's own text of that turn), `tool_use` as tool calls.
fn messages_of(system: Option<&Value>, messages: &[Value]) -> Result<Vec<Message>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_request("messages: at least one message is required"));
    }
    if messages.len() > MAX_MESSAGES {
        return Err(ApiError::bad_request(format!(
            "messages: at most {MAX_MESSAGES} messages are accepted"
        )));
    }
    let mut out = Vec::with_capacity(messages.len() + 1);
    if let Some(s) = system.filter(|s| !s.is_null()) {
        let text = system_text(s)?;
        if !text.is_empty() {
            out.push(Message::new("system", text));
        }
    }
    // Tool names by tool_use id, so that results can name their tool.
    let mut tool_names: HashMap<String, String> = HashMap::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
            ApiError::bad_request(format!(
                "messages[{i}].role: \"user\" or \"assistant\" is required"
            ))
        })?;
        if !matches!(role, "user" | "assistant") {
            return Err(ApiError::bad_request(format!(
                "messages[{i}].role must be \"user\" or \"assistant\", got {role:?}"
            )));
        }
        let blocks: Vec<Value> = match m.get("content") {
            Some(Value::String(s)) => vec![json!({"type": "text", "text": s})],
            Some(Value::Array(b)) if b.len() <= MAX_BLOCKS => b.clone(),
            Some(Value::Array(_)) => {
                return Err(ApiError::bad_request(format!(
                    "messages[{i}].content has too many blocks"
                )));
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "messages[{i}].content must be a string or a list of content blocks"
                )));
            }
        };
        let mut msg = Message::new(role, "");
        let mut texts: Vec<String> = Vec::new();
        let mut thinking: Vec<String> = Vec::new();
        let mut calls: Vec<Value> = Vec::new();
        for (j, b) in blocks.iter().enumerate() {
            let at = format!("messages[{i}].content[{j}]");
            let kind = b.get("type").and_then(Value::as_str).unwrap_or("");
            match (role, kind) {
                (_, "text") => texts.push(
                    b.get("text")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            ApiError::bad_request(format!("{at}.text must be a string"))
                        })?
                        .to_string(),
                ),
                ("user", "image") => msg.images.push(image_data(&at, b)?),
                ("user", "tool_result") => {
                    let id = b.get("tool_use_id").and_then(Value::as_str).ok_or_else(|| {
                        ApiError::bad_request(format!("{at}.tool_use_id must be a string"))
                    })?;
                    let (content, images) =
                        tool_result_content(&format!("{at}.content"), b.get("content"))?;
                    let mut tool = Message::new("tool", content);
                    tool.images = images;
                    tool.extra.insert("tool_call_id".into(), json!(id));
                    if let Some(name) = tool_names.get(id) {
                        tool.extra.insert("name".into(), json!(name));
                    }
                    if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                        tool.extra.insert("is_error".into(), json!(true));
                    }
                    out.push(tool);
                }
                ("assistant", "thinking") => {
                    if let Some(t) = b.get("thinking").and_then(Value::as_str) {
                        thinking.push(t.to_string());
                    }
                }
                ("assistant", "redacted_thinking") => {}
                ("assistant", "tool_use") => {
                    let id = b.get("id").and_then(Value::as_str).unwrap_or_default();
                    let name = b.get("name").and_then(Value::as_str).ok_or_else(|| {
                        ApiError::bad_request(format!("{at}.name must be a string"))
                    })?;
                    let input = match b.get("input") {
                        Some(v @ Value::Object(_)) => v.clone(),
                        None | Some(Value::Null) => json!({}),
                        Some(other) => {
                            return Err(ApiError::bad_request(format!(
                                "{at}.input must be an object, got {other}"
                            )));
                        }
                    };
                    tool_names.insert(id.to_string(), name.to_string());
                    calls.push(json!({"id": id, "type": "function",
                                      "function": {"name": name, "arguments": input}}));
                }
                (_, kind) => {
                    return Err(ApiError::bad_request(format!(
                        "{at}: block type {kind:?} is not supported in a {role} message"
                    )));
                }
            }
        }
        msg.content = texts.join("\n");
        if !thinking.is_empty() {
            msg.extra.insert("thinking".into(), json!(thinking.join("\n")));
        }
        if !calls.is_empty() {
            msg.tool_calls = Some(calls);
        }
        // A user turn of tool results alone adds no empty user message.
        let only_results = role == "user" && msg.content.is_empty() && msg.images.is_empty();
        if !only_results || !blocks.iter().any(|b| b.get("type") == Some(&json!("tool_result"))) {
            out.push(msg);
        }
    }
    Ok(out)
}

/// A parsed request: the chat, what to do with tools, and thinking.
struct Parsed {
    messages: Vec<Message>,
    tools: Option<Vec<Value>>,
    choice: ToolChoice,
    think: Option<bool>,
}

fn parse(req: &MessagesRequest) -> Result<Parsed, ApiError> {
    let _ = &req.metadata;
    Ok(Parsed {
        messages: messages_of(req.system.as_ref(), &req.messages)?,
        tools: tools_of(req.tools.as_deref())?,
        choice: tool_choice_of(req.tool_choice.as_ref())?,
        think: thinking_of(req.thinking.as_ref(), req.max_tokens)?,
    })
}

/// `thinking: enabled` asks for thinking from a model that thinks; others answer without.
async fn think_setting(
    state: &Arc<AppState>,
    model: &str,
    asked: Option<bool>,
) -> Result<Option<bool>, ApiError> {
    match asked {
        Some(true) if !generation::model_thinks(state, model).await? => {
            tracing::debug!(model, "thinking asked of a model that does not think: ignored");
            Ok(None)
        }
        other => Ok(other),
    }
}

/// Why the answer ended, in Anthropic's words.
fn stop_reason(stats: &Stats, called_tools: bool) -> &'static str {
    if called_tools {
        "tool_use"
    } else if stats.stop_sequence.is_some() {
        "stop_sequence"
    } else if stats.done_reason == Some(DoneReason::Length) {
        "max_tokens"
    } else {
        "end_turn"
    }
}

/// The kind of content block open in a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Text,
    Thinking,
}

/// Decides Anthropic's stream events from a generation's pieces: opens and closes
/// content blocks (`thinking`, `text`, `tool_use`) with consecutive indexes, and ends
/// with `message_delta` and `message_stop`. Pure: the handler sends what it returns.
#[derive(Debug, Default)]
pub struct BlockSequencer {
    open: Option<BlockKind>,
    next_index: usize,
    called_tools: bool,
    output_tokens: usize,
}

/// One event: its name and data.
pub type SseEvent = (&'static str, Value);

impl BlockSequencer {
    /// `message_start` (with the prompt's token count) and a `ping`.
    pub fn start(id: &str, model: &str, input_tokens: usize) -> Vec<SseEvent> {
        vec![
            (
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": id, "type": "message", "role": "assistant", "model": model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": input_tokens, "output_tokens": 0}}}),
            ),
            ("ping", json!({"type": "ping"})),
        ]
    }

    fn close(&mut self, out: &mut Vec<SseEvent>) {
        if self.open.take().is_some() {
            let index = self.next_index - 1;
            out.push(("content_block_stop", json!({"type": "content_block_stop", "index": index})));
        }
    }

    fn delta(&mut self, kind: BlockKind, text: &str) -> Vec<SseEvent> {
        let mut out = Vec::new();
        if self.open != Some(kind) {
            self.close(&mut out);
            let block = match kind {
                BlockKind::Text => json!({"type": "text", "text": ""}),
                BlockKind::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
            };
            out.push((
                "content_block_start",
                json!({"type": "content_block_start", "index": self.next_index, "content_block": block}),
            ));
            self.open = Some(kind);
            self.next_index += 1;
        }
        let delta = match kind {
            BlockKind::Text => json!({"type": "text_delta", "text": text}),
            BlockKind::Thinking => json!({"type": "thinking_delta", "thinking": text}),
        };
        out.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": self.next_index - 1, "delta": delta}),
        ));
        out
    }

    /// Answer text.
    pub fn text(&mut self, text: &str) -> Vec<SseEvent> {
        self.delta(BlockKind::Text, text)
    }

    /// Thinking text.
    pub fn thinking(&mut self, text: &str) -> Vec<SseEvent> {
        self.delta(BlockKind::Thinking, text)
    }

    /// Tool calls, each a `tool_use` block with its id and its input as one
    /// `input_json_delta`.
    pub fn tool_calls(&mut self, calls: &[(String, ToolCall)]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        self.close(&mut out);
        for (id, call) in calls {
            let index = self.next_index;
            self.next_index += 1;
            out.push((
                "content_block_start",
                json!({"type": "content_block_start", "index": index, "content_block":
                    {"type": "tool_use", "id": id, "name": call.name, "input": {}}}),
            ));
            out.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta":
                    {"type": "input_json_delta",
                     "partial_json": Value::Object(call.arguments.clone()).to_string()}}),
            ));
            out.push(("content_block_stop", json!({"type": "content_block_stop", "index": index})));
            self.called_tools = true;
        }
        out
    }

    /// The end: the open block closed, `message_delta` with the stop reason and usage,
    /// `message_stop`.
    pub fn done(&mut self, stats: &Stats) -> Vec<SseEvent> {
        let mut out = Vec::new();
        self.close(&mut out);
        self.output_tokens = stats.eval_count;
        let reason = stop_reason(stats, self.called_tools);
        let stop_sequence =
            if reason == "stop_sequence" { json!(stats.stop_sequence) } else { Value::Null };
        out.push((
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": reason, "stop_sequence": stop_sequence},
                   "usage": {"input_tokens": stats.prompt_tokens, "output_tokens": stats.eval_count}}),
        ));
        out.push(("message_stop", json!({"type": "message_stop"})));
        out
    }

    /// A failure mid-stream: an `error` event (the stream ends after it).
    pub fn error(e: &ApiError) -> Vec<SseEvent> {
        vec![("error", error_body(e.status, &e.message))]
    }
}

/// Calls with fresh `toolu_` ids.
fn with_ids(calls: Vec<ToolCall>) -> Vec<(String, ToolCall)> {
    calls.into_iter().map(|c| (generation::new_id("toolu_"), c)).collect()
}

fn stream_response(running: Running, id: String) -> Response {
    struct St {
        running: Option<Running>,
        seq: BlockSequencer,
        queue: std::collections::VecDeque<String>,
    }
    let mut queue = std::collections::VecDeque::new();
    for (name, data) in BlockSequencer::start(&id, &running.model, running.prompt.len()) {
        queue.push_back(generation::sse_event(name, &data));
    }
    let st = St { running: Some(running), seq: BlockSequencer::default(), queue };
    generation::sse_response(stream::unfold(st, |mut st| async move {
        loop {
            if let Some(line) = st.queue.pop_front() {
                return Some((line, st));
            }
            let running = st.running.as_mut()?;
            let events = match running.next().await {
                Some(Piece::Text(t)) => st.seq.text(&t),
                Some(Piece::Thinking(t)) => st.seq.thinking(&t),
                Some(Piece::ToolCalls(calls)) => st.seq.tool_calls(&with_ids(calls)),
                Some(Piece::Done(stats)) => {
                    st.running = None;
                    st.seq.done(&stats)
                }
                Some(Piece::Error(e)) => {
                    st.running = None;
                    BlockSequencer::error(&e)
                }
                None => {
                    st.running = None;
                    BlockSequencer::error(&ApiError::internal(
                        "the engine stopped before the answer was complete",
                    ))
                }
            };
            st.queue.extend(events.iter().map(|(name, data)| generation::sse_event(name, data)));
        }
    }))
}

/// The request's sampling options.
fn options_of(req: &MessagesRequest, max_tokens: i64) -> Result<Value, ApiError> {
    SamplingFields {
        max_tokens: Some(max_tokens),
        temperature: req.temperature,
        max_temperature: 1.0,
        top_p: req.top_p,
        top_k: req.top_k,
        stop: req.stop_sequences.clone().unwrap_or_default(),
        seed: None,
    }
    .to_options("max_tokens")
}

/// The grammar of `output_config.format` (structured outputs:
/// `{"type": "json_schema", "schema": {...}}`); `effort` is accepted and ignored.
fn output_format_grammar(config: Option<&Value>) -> Result<Option<Arc<Grammar>>, ApiError> {
    let Some(format) = config.and_then(|c| c.get("format")).filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    if format.get("type").and_then(Value::as_str) != Some("json_schema") {
        return Err(ApiError::bad_request(format!(
            "output_config.format must be {{\"type\": \"json_schema\", \"schema\": ...}}, got {format}"
        )));
    }
    let schema = format.get("schema").filter(|s| s.is_object()).ok_or_else(|| {
        ApiError::bad_request("output_config.format.schema: a JSON schema object is required")
    })?;
    Grammar::from_schema(schema)
        .map(|g| Some(Arc::new(g)))
        .map_err(|e| ApiError::bad_request(format!("output_config.format.schema: {e}")))
}

/// `POST /v1/messages`.
pub async fn messages(State(state): State<Arc<AppState>>, body: Bytes) -> AnthropicResult {
    let req = parse_request(&body)?;
    let Some(max_tokens) = req.max_tokens else {
        return Err(ApiError::bad_request("max_tokens: Field required").into());
    };
    let options = options_of(&req, max_tokens)?;
    let Parsed { messages, tools, choice, think } = parse(&req)?;
    let grammar = choice
        .grammar_or(tools.as_deref(), || output_format_grammar(req.output_config.as_ref()))?;
    let model = state.sched.named(&req.model)?;
    let think = think_setting(&state, &model.name, think).await?;
    let parse_tools = choice != ToolChoice::None;
    let mut request =
        GenRequest::chat(model.name.clone(), options, grammar, think, messages, tools.clone());
    // A final assistant message is a prefill: the answer continues it.
    if let generation::PromptSpec::Chat { continue_final, .. } = &mut request.prompt {
        *continue_final = true;
    }
    let running = generation::start(&state, request)
        .await?
        .with_tools(tools.as_deref().filter(|_| parse_tools));
    let id = generation::new_id("msg_");
    if req.stream == Some(true) {
        return Ok(stream_response(running, id));
    }
    let (collected, running) = running.collect().await?;
    let stats = &collected.stats;
    let mut content = Vec::new();
    if !collected.thinking.is_empty() {
        content.push(json!({"type": "thinking", "thinking": collected.thinking, "signature": ""}));
    }
    if !collected.text.is_empty() {
        content.push(json!({"type": "text", "text": collected.text}));
    }
    let called_tools = !collected.calls.is_empty();
    for (id, call) in with_ids(collected.calls) {
        content.push(json!({"type": "tool_use", "id": id, "name": call.name,
                            "input": Value::Object(call.arguments)}));
    }
    let reason = stop_reason(stats, called_tools);
    let stop_sequence =
        if reason == "stop_sequence" { json!(stats.stop_sequence) } else { Value::Null };
    Ok(axum::Json(json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": running.model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": stop_sequence,
        "usage": {"input_tokens": stats.prompt_tokens, "output_tokens": stats.eval_count},
    }))
    .into_response())
}

/// `POST /v1/messages/count_tokens`: the prompt's tokens with the model's template and
/// tokenizer.
pub async fn count_tokens(State(state): State<Arc<AppState>>, body: Bytes) -> AnthropicResult {
    let req = parse_request(&body)?;
    let Parsed { messages, tools, think, .. } = parse(&req)?;
    let model = state.sched.named(&req.model)?;
    let think = think_setting(&state, &model.name, think).await?;
    let n =
        generation::count_chat_tokens(&state, &model.name, messages, tools, think, true).await?;
    Ok(axum::Json(json!({"input_tokens": n})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    #[test]
    fn conversation_maps_onto_chat_messages() {
        let system =
            json!([{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}]);
        let messages = vec![
            json!({"role": "user", "content": "weather in Paris?"}),
            json!({"role": "assistant", "content": [
                {"type": "thinking", "thinking": "use the tool", "signature": "x"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]}),
            json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
                {"type": "text", "text": "thanks"}]}),
        ];
        let out = messages_of(Some(&system), &messages).unwrap();
        let roles: Vec<&str> = out.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "user"]);
        assert_eq!(out[0].content, "Be brief.\n\nBe kind.");
        assert_eq!(out[2].content, "Let me look.");
        assert_eq!(out[2].extra["thinking"], "use the tool");
        let call = &out[2].tool_calls.as_ref().unwrap()[0];
        assert_eq!(call["function"]["name"], "get_weather");
        assert_eq!(call["function"]["arguments"]["city"], "Paris");
        assert_eq!(out[3].content, "sunny");
        assert_eq!(out[3].extra["tool_call_id"], "toolu_1");
        assert_eq!(out[3].extra["name"], "get_weather");
        assert_eq!(out[4].content, "thanks");
        // Tool results alone make no empty user message.
        let only = vec![
            json!({"role": "user", "content": "hi"}),
            json!({"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}),
            json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "42"}]}),
        ];
        let roles: Vec<String> =
            messages_of(None, &only).unwrap().into_iter().map(|m| m.role).collect();
        assert_eq!(roles, ["user", "assistant", "tool"]);
    }

    #[test]
    fn malformed_fields_are_refused_clearly() {
        assert!(messages_of(None, &[]).unwrap_err().message.contains("at least one"));
        let e = messages_of(None, &[json!({"role": "system", "content": "x"})]).unwrap_err();
        assert!(e.message.contains("\"user\" or \"assistant\""), "{}", e.message);
        let e = messages_of(None, &[json!({"role": "user", "content": 3})]).unwrap_err();
        assert!(e.message.contains("messages[0].content"), "{}", e.message);
        let e = messages_of(None, &[json!({"role": "user", "content": [{"type": "video"}]})])
            .unwrap_err();
        assert!(e.message.contains("\"video\""), "{}", e.message);
        assert!(system_text(&json!(5)).is_err());
        assert!(tool_choice_of(Some(&json!({"type": "tool"}))).is_err());
        assert_eq!(tool_choice_of(Some(&json!({"type": "any"}))).unwrap(), ToolChoice::Required);
        let enabled = |b: i64| json!({"type": "enabled", "budget_tokens": b});
        assert!(thinking_of(Some(&enabled(-1)), Some(4096)).is_err());
        assert_eq!(thinking_of(Some(&enabled(2048)), Some(4096)).unwrap(), Some(true));
        let e = thinking_of(Some(&enabled(4096)), Some(4096)).unwrap_err();
        assert!(e.message.contains("greater than thinking.budget_tokens"), "{}", e.message);
        assert_eq!(thinking_of(Some(&json!({"type": "adaptive"})), None).unwrap(), Some(true));
        assert!(output_format_grammar(Some(&json!({"format": {"type": "xml"}}))).is_err());
        let format = json!({"format": {"type": "json_schema", "schema": {"type": "object"}}});
        assert!(output_format_grammar(Some(&format)).unwrap().is_some());
        assert!(tools_of(Some(&[json!({"name": "f"})])).is_err());
        assert!(tools_of(Some(&[json!({"type": "web_search_20250305", "name": "w"})])).is_err());
        let tools = tools_of(Some(&[json!({"name": "f", "description": "d",
                                            "input_schema": {"type": "object"}})]))
        .unwrap()
        .unwrap();
        assert_eq!(
            tools[0],
            json!({"type": "function", "function":
            {"name": "f", "description": "d", "parameters": {"type": "object"}}})
        );
    }

    #[test]
    fn events_come_in_anthropic_order() {
        let mut seq = BlockSequencer::default();
        let mut events = BlockSequencer::start("msg_1", "m", 7);
        events.extend(seq.thinking("hmm"));
        events.extend(seq.thinking(" ok"));
        events.extend(seq.text("Hi"));
        let mut args = Map::new();
        args.insert("city".into(), json!("Oslo"));
        events.extend(
            seq.tool_calls(&[("toolu_x".into(), ToolCall { name: "w".into(), arguments: args })]),
        );
        let stats = Stats { prompt_tokens: 7, eval_count: 5, ..Default::default() };
        events.extend(seq.done(&stats));
        let names: Vec<&str> = events.iter().map(|e| e.0).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let indexes: Vec<u64> = events.iter().filter_map(|e| e.1["index"].as_u64()).collect();
        assert_eq!(indexes, [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]);
        assert_eq!(events[2].1["content_block"]["type"], "thinking");
        assert_eq!(events[3].1["delta"], json!({"type": "thinking_delta", "thinking": "hmm"}));
        assert_eq!(events[7].1["delta"], json!({"type": "text_delta", "text": "Hi"}));
        assert_eq!(events[9].1["content_block"]["id"], "toolu_x");
        assert_eq!(events[10].1["delta"]["partial_json"], "{\"city\":\"Oslo\"}");
        assert_eq!(events[12].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(events[12].1["usage"]["output_tokens"], 5);
    }

    #[test]
    fn stop_reasons() {
        let mut s = Stats::default();
        assert_eq!(stop_reason(&s, false), "end_turn");
        assert_eq!(stop_reason(&s, true), "tool_use");
        s.done_reason = Some(DoneReason::Length);
        assert_eq!(stop_reason(&s, false), "max_tokens");
        s.done_reason = Some(DoneReason::Stop);
        s.stop_sequence = Some("END".into());
        assert_eq!(stop_reason(&s, false), "stop_sequence");
        let mut seq = BlockSequencer::default();
        let events = seq.done(&s);
        assert_eq!(events[0].1["delta"]["stop_sequence"], "END");
        let e = BlockSequencer::error(&ApiError::busy("full"));
        assert_eq!(e[0].0, "error");
        assert_eq!(e[0].1["error"]["type"], "overloaded_error");
    }
}
