//! OpenAI's Responses API: `POST /v1/responses` and `GET /v1/responses/{id}`.
//!
//! `input` (a string, or message, `function_call` and `function_call_output` items) and
//! `instructions` become a chat for the model's template; a `previous_response_id` puts
//! the stored conversation of that response first. Function tools, `tool_choice`
//! (`required` or a named function forces a call through the structured-output
//! constraint) and `text.format` (`json_schema`, `json_object`) map onto the shared
//! generation. [`OutputBuilder`] turns the generation's pieces into output items
//! (`reasoning`, `message`, `function_call`) and, when streaming, into the Responses
//! events with their `sequence_number`s. Answers are kept in [`ResponseStore`] (in
//! memory, bounded) for `previous_response_id` and `GET`. Errors use OpenAI's shape;
//! unknown top-level fields are ignored (logged at debug level).

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Bytes,
    extract::{Path, Request, State},
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
    openai::OaiError,
    util::{ApiError, parse_body_lenient, unix_now},
};
use crate::{engine_loop::Stats, prompt::Message};

/// Most input items one request may carry.
const MAX_ITEMS: usize = 10_000;
/// Most content parts one message item may carry.
const MAX_PARTS: usize = 10_000;
/// Most tools one request may offer.
/// Most responses kept for `previous_response_id`.
pub const MAX_STORED_RESPONSES: usize = 1_000;
/// Most bytes (of their JSON) the kept responses may take together.
pub const MAX_STORED_BYTES: usize = 256 << 20;

type OaiResult = Result<Response, OaiError>;

/// Middleware for the Responses routes: errors made before a handler ran (the body
/// limit, a wrong method) get OpenAI's shape too.
pub async fn error_shape(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let body = axum::body::to_bytes(body, 64 << 10).await.unwrap_or_default();
    let parsed = serde_json::from_slice::<Value>(&body).ok();
    match parsed.as_ref().and_then(|v| v.get("error")) {
        // Already OpenAI's shape.
        Some(Value::Object(_)) => Response::from_parts(parts, axum::body::Body::from(body)),
        Some(Value::String(message)) => {
            OaiError(ApiError { status, message: message.clone() }).into_response()
        }
        _ => OaiError(ApiError {
            status,
            message: status.canonical_reason().unwrap_or("error").to_string(),
        })
        .into_response(),
    }
}

/// One kept response: its JSON and the conversation that continues from it.
struct Stored {
    response: Value,
    history: Vec<Message>,
    bytes: usize,
    last_used: u64,
}

#[derive(Default)]
struct StoreInner {
    entries: HashMap<String, Stored>,
    bytes: usize,
    clock: u64,
}

/// Responses kept in memory for the server's lifetime, at most
/// [`MAX_STORED_RESPONSES`] of them and [`MAX_STORED_BYTES`] together; beyond either,
/// the least recently used go.
#[derive(Default)]
pub struct ResponseStore {
    inner: std::sync::Mutex<StoreInner>,
}

impl ResponseStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, StoreInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `response` under its id with the conversation that continues from it.
    fn insert(&self, id: String, response: Value, history: Vec<Message>) {
        let bytes = response.to_string().len()
            + history
                .iter()
                .map(|m| serde_json::to_string(m).map_or(0, |s| s.len()))
                .sum::<usize>();
        if bytes > MAX_STORED_BYTES {
            tracing::debug!(id, bytes, "response too large to keep");
            return;
        }
        let mut inner = self.lock();
        inner.clock += 1;
        let last_used = inner.clock;
        if let Some(old) = inner.entries.insert(id, Stored { response, history, bytes, last_used })
        {
            inner.bytes -= old.bytes;
        }
        inner.bytes += bytes;
        while inner.entries.len() > MAX_STORED_RESPONSES || inner.bytes > MAX_STORED_BYTES {
            let Some(oldest) =
                inner.entries.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(gone) = inner.entries.remove(&oldest) {
                inner.bytes -= gone.bytes;
            }
        }
    }

    /// The response and conversation kept under `id` (marking it used).
    fn get(&self, id: &str) -> Option<(Value, Vec<Message>)> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        let s = inner.entries.get_mut(id)?;
        s.last_used = now;
        Some((s.response.clone(), s.history.clone()))
    }

    /// Forgets the response kept under `id`; whether there was one.
    fn remove(&self, id: &str) -> bool {
        let mut inner = self.lock();
        match inner.entries.remove(id) {
            Some(gone) => {
                inner.bytes -= gone.bytes;
                true
            }
            None => false,
        }
    }

    /// How many responses are kept.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `POST /v1/responses` body. Unknown fields are accepted.
#[derive(Deserialize)]
pub struct ResponsesRequest {
    model: String,
    input: Value,
    #[serde(default)]
    instructions: Option<String>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    text: Option<Value>,
    #[serde(default)]
    max_output_tokens: Option<i64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    previous_response_id: Option<String>,
    #[serde(default)]
    store: Option<bool>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    reasoning: Option<Value>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
}

/// The fields of [`ResponsesRequest`]; others are ignored.
const KNOWN_FIELDS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "text",
    "max_output_tokens",
    "temperature",
    "top_p",
    "previous_response_id",
    "store",
    "stream",
    "reasoning",
    "metadata",
    "parallel_tool_calls",
];

/// Responses' flat function tools as chat function tools.
fn tools_of(tools: Option<&[Value]>) -> Result<Option<Vec<Value>>, ApiError> {
    let Some(tools) = tools.filter(|t| !t.is_empty()) else { return Ok(None) };
    if tools.len() > MAX_TOOLS {
        return Err(ApiError::bad_request(format!("at most {MAX_TOOLS} tools are accepted")));
    }
    generation::check_tools_size(tools)?;
    let mut out = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        match t.get("type").and_then(Value::as_str) {
            Some("function") => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "tools[{i}]: tool type {} is not supported (only \"function\" is)",
                    generation::shown_type(other)
                )));
            }
        }
        let name =
            t.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()).ok_or_else(|| {
                ApiError::bad_request(format!("tools[{i}].name: a name is required"))
            })?;
        let mut function = json!({"name": name});
        match t.get("parameters") {
            None | Some(Value::Null) => function["parameters"] = json!({"type": "object"}),
            Some(p @ Value::Object(_)) => function["parameters"] = p.clone(),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "tools[{i}].parameters must be a JSON schema object, got {other}"
                )));
            }
        }
        if let Some(d) = t.get("description").and_then(Value::as_str) {
            function["description"] = json!(d);
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(Some(out))
}

/// The grammar `text.format` asks for.
fn text_format_grammar(text: Option<&Value>) -> Result<Option<Arc<Grammar>>, ApiError> {
    let Some(format) = text.and_then(|t| t.get("format")).filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Arc::new(Grammar::json_object()))),
        Some("json_schema") => {
            let schema = format.get("schema").filter(|s| s.is_object()).ok_or_else(|| {
                ApiError::bad_request("text.format json_schema needs a schema object")
            })?;
            Grammar::from_schema(schema)
                .map(|g| Some(Arc::new(g)))
                .map_err(|e| ApiError::bad_request(format!("text.format.schema: {e}")))
        }
        other => Err(ApiError::bad_request(format!(
            "text.format.type must be \"text\", \"json_object\" or \"json_schema\", got {}",
            generation::shown_type(other)
        ))),
    }
}

/// The text (and data-URL images) of a message item's content.
fn content_of(at: &str, v: Option<&Value>) -> Result<(String, Vec<String>), ApiError> {
    match v {
        None | Some(Value::Null) => Ok((String::new(), Vec::new())),
        Some(Value::String(s)) => Ok((s.clone(), Vec::new())),
        Some(Value::Array(parts)) if parts.len() <= MAX_PARTS => {
            let (mut text, mut images) = (String::new(), Vec::new());
            for (j, p) in parts.iter().enumerate() {
                match p.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text") => {
                        text.push_str(p.get("text").and_then(Value::as_str).ok_or_else(|| {
                            ApiError::bad_request(format!("{at}[{j}].text must be a string"))
                        })?);
                    }
                    Some("refusal") => {
                        text.push_str(p.get("refusal").and_then(Value::as_str).unwrap_or(""));
                    }
                    Some("input_image") => {
                        let url = p.get("image_url").and_then(Value::as_str).unwrap_or("");
                        let data = url
                            .strip_prefix("data:")
                            .and_then(|rest| rest.split_once(";base64,"))
                            .map(|(_, data)| data.to_string())
                            .ok_or_else(|| {
                                ApiError::bad_request(format!(
                                    "{at}[{j}]: only base64 data URLs are supported as image_url"
                                ))
                            })?;
                        images.push(data);
                    }
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "{at}[{j}]: content part type {} is not supported",
                            generation::shown_type(other)
                        )));
                    }
                }
            }
            Ok((text, images))
        }
        Some(other) => Err(ApiError::bad_request(format!(
            "{at} must be a string or a list of content parts, got {other}"
        ))),
    }
}

/// Tool names by call id, from the tool calls of `messages`.
fn call_names(messages: &[Message]) -> HashMap<String, String> {
    let mut names = HashMap::new();
    for m in messages {
        for c in m.tool_calls.iter().flatten() {
            if let (Some(id), Some(name)) =
                (c.get("id").and_then(Value::as_str), generation::tool_name(c))
            {
                names.insert(id.to_string(), name.to_string());
            }
        }
    }
    names
}

/// `input` as chat messages, after `earlier` (the stored conversation, for tool names).
fn input_messages(input: &Value, earlier: &[Message]) -> Result<Vec<Message>, ApiError> {
    let items = match input {
        Value::String(s) => return Ok(vec![Message::new("user", s.clone())]),
        Value::Array(items) if items.len() <= MAX_ITEMS => items,
        Value::Array(_) => {
            return Err(ApiError::bad_request(format!(
                "input: at most {MAX_ITEMS} items are accepted"
            )));
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "input must be a string or a list of items, got {other}"
            )));
        }
    };
    let mut names = call_names(earlier);
    let mut out: Vec<Message> = Vec::with_capacity(items.len());
    let mut pending_thinking: Option<String> = None;
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        let kind = item.get("type").and_then(Value::as_str);
        match kind {
            Some("message") | None if item.get("role").is_some() => {
                let role = item.get("role").and_then(Value::as_str).unwrap_or("");
                let role = match role {
                    "developer" => "system",
                    "user" | "system" | "assistant" => role,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "{at}.role must be \"user\", \"assistant\", \"system\" or \
                             \"developer\", got {other:?}"
                        )));
                    }
                };
                let (text, images) = content_of(&format!("{at}.content"), item.get("content"))?;
                let mut m = Message::new(role, text);
                m.images = images;
                if role == "assistant"
                    && let Some(t) = pending_thinking.take()
                {
                    m.extra.insert("thinking".into(), json!(t));
                }
                out.push(m);
            }
            Some("function_call") => {
                let field = |name: &str| {
                    item.get(name).and_then(Value::as_str).ok_or_else(|| {
                        ApiError::bad_request(format!("{at}.{name} must be a string"))
                    })
                };
                let (call_id, name, arguments) =
                    (field("call_id")?, field("name")?, field("arguments")?);
                let Ok(arguments @ Value::Object(_)) = serde_json::from_str::<Value>(arguments)
                else {
                    return Err(ApiError::bad_request(format!(
                        "{at}.arguments is not a JSON object"
                    )));
                };
                names.insert(call_id.to_string(), name.to_string());
                let call = json!({"id": call_id, "type": "function",
                                  "function": {"name": name, "arguments": arguments}});
                // Calls after an assistant message (or other calls) belong to its turn.
                match out.last_mut() {
                    Some(last) if last.role == "assistant" => {
                        last.tool_calls.get_or_insert_with(Vec::new).push(call);
                    }
                    _ => {
                        let mut m = Message::new("assistant", "");
                        if let Some(t) = pending_thinking.take() {
                            m.extra.insert("thinking".into(), json!(t));
                        }
                        m.tool_calls = Some(vec![call]);
                        out.push(m);
                    }
                }
            }
            Some("function_call_output") => {
                let call_id = item.get("call_id").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::bad_request(format!("{at}.call_id must be a string"))
                })?;
                let (text, images) = content_of(&format!("{at}.output"), item.get("output"))?;
                let mut m = Message::new("tool", text);
                m.images = images;
                m.extra.insert("tool_call_id".into(), json!(call_id));
                if let Some(name) = names.get(call_id) {
                    m.extra.insert("name".into(), json!(name));
                }
                out.push(m);
            }
            Some("reasoning") => {
                let texts = |key: &str| -> Vec<String> {
                    item.get(key)
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .take(MAX_PARTS)
                                .filter_map(|p| p.get("text").and_then(Value::as_str))
                                .map(str::to_string)
                                .collect()
                        })
                        .unwrap_or_default()
                };
                let mut t = texts("content");
                if t.is_empty() {
                    t = texts("summary");
                }
                if !t.is_empty() {
                    pending_thinking = Some(t.join("\n"));
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "{at}: input item type {} is not supported (messages, function_call, \
                     function_call_output and reasoning are)",
                    generation::shown_type(other)
                )));
            }
        }
    }
    Ok(out)
}

/// The item open in the output.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OpenKind {
    Reasoning,
    Message,
}

#[derive(Debug)]
struct OpenItem {
    kind: OpenKind,
    id: String,
    text: String,
}

/// Builds a response's output items from a generation's pieces and says which stream
/// events each step makes (the events are dropped when not streaming). Pure.
#[derive(Debug)]
pub struct OutputBuilder {
    /// The response object without `output`, `status` and `usage`.
    base: Value,
    output: Vec<Value>,
    open: Option<OpenItem>,
    sequence: u64,
    /// Text, thinking and calls of the answer, for the stored conversation.
    text: String,
    thinking: String,
    calls: Vec<Value>,
}

/// One stream event: its type and data.
pub type StreamEvent = (String, Value);

impl OutputBuilder {
    /// A builder for the response `base` (`id`, `model`, the echoed request fields).
    pub fn new(base: Value) -> Self {
        OutputBuilder {
            base,
            output: Vec::new(),
            open: None,
            sequence: 0,
            text: String::new(),
            thinking: String::new(),
            calls: Vec::new(),
        }
    }

    fn event(&mut self, kind: &str, mut data: Value) -> StreamEvent {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        (kind.to_string(), data)
    }

    /// The response object in `status`, with the output so far.
    pub fn response(&self, status: &str) -> Value {
        let mut r = self.base.clone();
        r["status"] = json!(status);
        r["output"] = Value::Array(self.output.clone());
        r
    }

    /// `response.created` and `response.in_progress`.
    pub fn start(&mut self) -> Vec<StreamEvent> {
        let r = self.response("in_progress");
        vec![
            self.event("response.created", json!({"response": r})),
            self.event("response.in_progress", json!({"response": r})),
        ]
    }

    fn part_of(kind: &OpenKind, text: &str) -> Value {
        match kind {
            OpenKind::Message => json!({"type": "output_text", "text": text, "annotations": []}),
            OpenKind::Reasoning => json!({"type": "reasoning_text", "text": text}),
        }
    }

    fn item_of(kind: &OpenKind, id: &str, text: &str, status: &str) -> Value {
        let parts =
            if status == "in_progress" { json!([]) } else { json!([Self::part_of(kind, text)]) };
        match kind {
            OpenKind::Message => json!({"id": id, "type": "message", "status": status,
                                        "role": "assistant", "content": parts}),
            OpenKind::Reasoning => json!({"id": id, "type": "reasoning", "status": status,
                                          "summary": [], "content": parts}),
        }
    }

    fn close(&mut self, status: &str, out: &mut Vec<StreamEvent>) {
        let Some(open) = self.open.take() else { return };
        let index = self.output.len();
        let (done, text_key) = match open.kind {
            OpenKind::Message => ("response.output_text.done", json!({"logprobs": []})),
            OpenKind::Reasoning => ("response.reasoning_text.done", json!({})),
        };
        let mut data = text_key;
        data["item_id"] = json!(open.id);
        data["output_index"] = json!(index);
        data["content_index"] = json!(0);
        data["text"] = json!(open.text);
        out.push(self.event(done, data));
        let part = Self::part_of(&open.kind, &open.text);
        out.push(self.event(
            "response.content_part.done",
            json!({"item_id": open.id, "output_index": index, "content_index": 0, "part": part}),
        ));
        let item = Self::item_of(&open.kind, &open.id, &open.text, status);
        out.push(self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": item.clone()}),
        ));
        self.output.push(item);
    }

    fn delta(&mut self, kind: OpenKind, text: &str) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        if self.open.as_ref().map(|o| &o.kind) != Some(&kind) {
            self.close("completed", &mut out);
            let id = generation::new_id(match kind {
                OpenKind::Message => "msg_",
                OpenKind::Reasoning => "rs_",
            });
            let index = self.output.len();
            let item = Self::item_of(&kind, &id, "", "in_progress");
            out.push(
                self.event(
                    "response.output_item.added",
                    json!({"output_index": index, "item": item}),
                ),
            );
            let part = Self::part_of(&kind, "");
            out.push(self.event(
                "response.content_part.added",
                json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
            ));
            self.open = Some(OpenItem { kind: kind.clone(), id, text: String::new() });
        }
        let index = self.output.len();
        let Some(open) = self.open.as_mut() else { return out };
        open.text.push_str(text);
        let id = open.id.clone();
        match kind {
            OpenKind::Message => {
                self.text.push_str(text);
                out.push(self.event(
                    "response.output_text.delta",
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                           "delta": text, "logprobs": []}),
                ));
            }
            OpenKind::Reasoning => {
                self.thinking.push_str(text);
                out.push(self.event(
                    "response.reasoning_text.delta",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text}),
                ));
            }
        }
        out
    }

    /// Answer text.
    pub fn text(&mut self, text: &str) -> Vec<StreamEvent> {
        self.delta(OpenKind::Message, text)
    }

    /// Thinking text.
    pub fn thinking(&mut self, text: &str) -> Vec<StreamEvent> {
        self.delta(OpenKind::Reasoning, text)
    }

    /// Tool calls, each a `function_call` item with a fresh `call_id`.
    pub fn tool_calls(&mut self, calls: &[ToolCall]) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        self.close("completed", &mut out);
        for call in calls {
            let index = self.output.len();
            let (id, call_id) = (generation::new_id("fc_"), generation::new_id("call_"));
            let arguments = Value::Object(call.arguments.clone()).to_string();
            let item = |status: &str, arguments: &str| {
                json!({"id": id, "type": "function_call", "status": status, "call_id": call_id,
                       "name": call.name, "arguments": arguments})
            };
            out.push(self.event(
                "response.output_item.added",
                json!({"output_index": index, "item": item("in_progress", "")}),
            ));
            out.push(self.event(
                "response.function_call_arguments.delta",
                json!({"item_id": id, "output_index": index, "delta": arguments}),
            ));
            out.push(self.event(
                "response.function_call_arguments.done",
                json!({"item_id": id, "output_index": index, "arguments": arguments,
                       "name": call.name}),
            ));
            let done = item("completed", &arguments);
            out.push(self.event(
                "response.output_item.done",
                json!({"output_index": index, "item": done.clone()}),
            ));
            self.output.push(done);
            self.calls.push(json!({"id": call_id, "type": "function",
                "function": {"name": call.name, "arguments": Value::Object(call.arguments.clone())}}));
        }
        out
    }

    /// The end: the open item closed, then `response.completed` (or
    /// `response.incomplete` when the token limit ended it) with the whole response.
    pub fn finish(&mut self, stats: &Stats) -> (Vec<StreamEvent>, Value) {
        let mut out = Vec::new();
        let incomplete = stats.done_reason == Some(DoneReason::Length);
        self.close(if incomplete { "incomplete" } else { "completed" }, &mut out);
        let mut r = self.response(if incomplete { "incomplete" } else { "completed" });
        if incomplete {
            r["incomplete_details"] = json!({"reason": "max_output_tokens"});
        }
        r["usage"] = json!({
            "input_tokens": stats.prompt_tokens,
            "input_tokens_details": {"cached_tokens": stats.cached_tokens},
            "output_tokens": stats.eval_count,
            "total_tokens": stats.prompt_tokens + stats.eval_count,
        });
        let kind = if incomplete { "response.incomplete" } else { "response.completed" };
        out.push(self.event(kind, json!({"response": r.clone()})));
        (out, r)
    }

    /// A failure mid-stream: `response.failed` with the error.
    pub fn fail(&mut self, e: &ApiError) -> Vec<StreamEvent> {
        let mut r = self.response("failed");
        let code = if e.status.is_server_error() { "server_error" } else { "invalid_request" };
        r["error"] = json!({"code": code, "message": e.message});
        vec![self.event("response.failed", json!({"response": r}))]
    }

    /// The answer as an assistant message of the conversation.
    fn assistant_message(&self) -> Message {
        let mut m = Message::new("assistant", self.text.clone());
        if !self.thinking.is_empty() {
            m.extra.insert("thinking".into(), json!(self.thinking));
        }
        if !self.calls.is_empty() {
            m.tool_calls = Some(self.calls.clone());
        }
        m
    }
}

fn sse_line((kind, data): &StreamEvent) -> String {
    generation::sse_event(kind, data)
}

/// What a finished response is kept with.
struct Keep {
    state: Arc<AppState>,
    history: Vec<Message>,
}

impl Keep {
    fn store(self, builder: &OutputBuilder, response: Value) {
        let id = response["id"].as_str().unwrap_or_default().to_string();
        let mut history = self.history;
        history.push(builder.assistant_message());
        self.state.responses.insert(id, response, history);
    }
}

fn stream_response(running: Running, mut builder: OutputBuilder, keep: Option<Keep>) -> Response {
    struct St {
        running: Option<Running>,
        builder: OutputBuilder,
        keep: Option<Keep>,
        queue: std::collections::VecDeque<String>,
    }
    let queue = builder.start().iter().map(sse_line).collect();
    let st = St { running: Some(running), builder, keep, queue };
    generation::sse_response(stream::unfold(st, |mut st| async move {
        loop {
            if let Some(line) = st.queue.pop_front() {
                return Some((line, st));
            }
            let running = st.running.as_mut()?;
            let events = match running.next().await {
                Some(Piece::Text(t)) => st.builder.text(&t),
                Some(Piece::Thinking(t)) => st.builder.thinking(&t),
                Some(Piece::ToolCalls(calls)) => st.builder.tool_calls(&calls),
                Some(Piece::Done(stats)) => {
                    st.running = None;
                    let (events, response) = st.builder.finish(&stats);
                    if let Some(keep) = st.keep.take() {
                        keep.store(&st.builder, response);
                    }
                    events
                }
                Some(Piece::Error(e)) => {
                    st.running = None;
                    st.builder.fail(&e)
                }
                None => {
                    st.running = None;
                    st.builder.fail(&ApiError::internal(
                        "the engine stopped before the answer was complete",
                    ))
                }
            };
            st.queue.extend(events.iter().map(sse_line));
        }
    }))
}

/// `reasoning.effort` as a thinking setting: `none` off, another effort on (for a model
/// that thinks), absent the model's default.
async fn think_setting(
    state: &Arc<AppState>,
    model: &str,
    reasoning: Option<&Value>,
) -> Result<Option<bool>, ApiError> {
    let effort = reasoning.and_then(|r| r.get("effort")).filter(|e| !e.is_null());
    match effort.map(|e| e.as_str()) {
        None => Ok(None),
        Some(Some("none")) => Ok(Some(false)),
        Some(Some("minimal" | "low" | "medium" | "high" | "xhigh")) => {
            Ok(generation::model_thinks(state, model).await?.then_some(true))
        }
        Some(_) => Err(ApiError::bad_request(format!(
            "reasoning.effort must be \"none\", \"minimal\", \"low\", \"medium\" or \"high\", got {}",
            effort.map_or(Value::Null, Value::clone)
        ))),
    }
}

/// `POST /v1/responses`.
pub async fn create(State(state): State<Arc<AppState>>, body: Bytes) -> OaiResult {
    let (req, unknown): (ResponsesRequest, _) = parse_body_lenient(&body, KNOWN_FIELDS)?;
    generation::log_ignored_fields("responses", &unknown);
    let options = SamplingFields {
        max_tokens: req.max_output_tokens,
        temperature: req.temperature,
        max_temperature: 2.0,
        top_p: req.top_p,
        ..Default::default()
    }
    .to_options("max_output_tokens")?;
    let tools = tools_of(req.tools.as_deref())?;
    let choice = ToolChoice::of_openai(req.tool_choice.as_ref())?;
    let grammar = choice.grammar_or(tools.as_deref(), || text_format_grammar(req.text.as_ref()))?;
    let earlier = match req.previous_response_id.as_deref() {
        None => Vec::new(),
        Some(id) => {
            let Some((_, history)) = state.responses.get(id) else {
                return Err(ApiError::not_found(format!(
                    "previous response {id:?} not found: this server keeps the last \
                     {MAX_STORED_RESPONSES} stored responses in memory, until it restarts"
                ))
                .into());
            };
            history
        }
    };
    let input = input_messages(&req.input, &earlier)?;
    if input.is_empty() && earlier.is_empty() {
        return Err(ApiError::bad_request("input must not be empty").into());
    }
    // The conversation kept for a next turn: without the instructions, which do not
    // carry over to a response that continues this one.
    let mut history = earlier;
    history.extend(input);
    let mut messages = Vec::with_capacity(history.len() + 1);
    if let Some(i) = req.instructions.as_deref().filter(|i| !i.is_empty()) {
        messages.push(Message::new("system", i));
    }
    messages.extend(history.iter().cloned());
    let model = state.sched.named(&req.model)?;
    let think = think_setting(&state, &model.name, req.reasoning.as_ref()).await?;
    let parse_tools = choice != ToolChoice::None;
    let running = generation::start(
        &state,
        GenRequest::chat(model.name.clone(), options, grammar, think, messages, tools.clone()),
    )
    .await?
    .with_tools(tools.as_deref().filter(|_| parse_tools));
    let store = req.store != Some(false);
    let text_format = req
        .text
        .as_ref()
        .and_then(|t| t.get("format"))
        .cloned()
        .unwrap_or_else(|| json!({"type": "text"}));
    let base = json!({
        "id": generation::new_id("resp_"),
        "object": "response",
        "created_at": unix_now(),
        "model": running.model,
        "error": null,
        "incomplete_details": null,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "metadata": req.metadata.clone().unwrap_or_else(|| json!({})),
        "parallel_tool_calls": req.parallel_tool_calls.unwrap_or(true),
        "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": req.reasoning.as_ref().and_then(|r| r.get("effort")).cloned(),
                      "summary": null},
        "store": store,
        "temperature": req.temperature,
        "text": {"format": text_format},
        "tool_choice": req.tool_choice.clone().unwrap_or_else(|| json!("auto")),
        "tools": req.tools.clone().unwrap_or_default(),
        "top_p": req.top_p,
        "truncation": "disabled",
        "usage": null,
        "user": null,
    });
    let mut builder = OutputBuilder::new(base);
    let keep = store.then(|| Keep { state: state.clone(), history });
    if req.stream == Some(true) {
        return Ok(stream_response(running, builder, keep));
    }
    let mut running = running;
    loop {
        match running.next().await {
            Some(Piece::Text(t)) => drop(builder.text(&t)),
            Some(Piece::Thinking(t)) => drop(builder.thinking(&t)),
            Some(Piece::ToolCalls(calls)) => drop(builder.tool_calls(&calls)),
            Some(Piece::Done(stats)) => {
                let (_, response) = builder.finish(&stats);
                if let Some(keep) = keep {
                    keep.store(&builder, response.clone());
                }
                return Ok(axum::Json(response).into_response());
            }
            Some(Piece::Error(e)) => return Err(e.into()),
            None => {
                return Err(ApiError::internal(
                    "the engine stopped before the answer was complete",
                )
                .into());
            }
        }
    }
}

/// `GET /v1/responses/{id}`: a stored response.
pub async fn get(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> OaiResult {
    match state.responses.get(&id) {
        Some((response, _)) => Ok(axum::Json(response).into_response()),
        None => Err(ApiError::not_found(format!("response {id:?} not found")).into()),
    }
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> OaiResult {
    if state.responses.remove(&id) {
        Ok(axum::Json(json!({"id": id, "object": "response", "deleted": true})).into_response())
    } else {
        Err(ApiError::not_found(format!("response {id:?} not found")).into())
    }
}

/// `GET /v1/responses/{id}/input_items`: the conversation the response answered (the
/// earlier responses' turns included), as a page of items.
pub async fn input_items(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    axum::extract::Query(page): axum::extract::Query<ItemsPage>,
) -> OaiResult {
    let Some((_, mut history)) = state.responses.get(&id) else {
        return Err(ApiError::not_found(format!("response {id:?} not found")).into());
    };
    // The last message is the response's own answer.
    history.pop();
    let mut data: Vec<Value> =
        history.iter().enumerate().flat_map(|(i, m)| item_of(&id, i, m)).collect();
    // OpenAI's page: newest first unless `order=asc`, `limit` items (20; 1 to 100)
    // after the item `after`.
    match page.order.as_deref() {
        None | Some("desc") => data.reverse(),
        Some("asc") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "order must be \"asc\" or \"desc\", not {other:?}"
            ))
            .into());
        }
    }
    if let Some(after) = &page.after {
        let Some(i) = data.iter().position(|m| m["id"] == after.as_str()) else {
            return Err(ApiError::bad_request(format!("no input item {after:?}")).into());
        };
        data.drain(..=i);
    }
    let limit = page.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request("limit must be from 1 to 100").into());
    }
    let has_more = data.len() > limit;
    data.truncate(limit);
    let first = data.first().map_or(Value::Null, |m| m["id"].clone());
    let last = data.last().map_or(Value::Null, |m| m["id"].clone());
    Ok(axum::Json(json!({"object": "list", "data": data, "has_more": has_more,
        "first_id": first, "last_id": last}))
    .into_response())
}

/// The query of `GET /v1/responses/{id}/input_items`.
#[derive(Deserialize)]
pub struct ItemsPage {
    order: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

/// A kept message as Responses API items: a message (its text as `input_text`, or
/// `output_text` for the assistant), an assistant's tool calls as `function_call`s, a
/// tool result as a `function_call_output`.
fn item_of(response: &str, index: usize, m: &Message) -> Vec<Value> {
    let id = format!("msg_{index}_{}", response.trim_start_matches("resp_"));
    let mut items = Vec::new();
    if m.role == "tool" {
        let call_id = m.extra.get("tool_call_id").cloned().unwrap_or(Value::Null);
        items.push(json!({"id": id, "type": "function_call_output", "call_id": call_id,
            "output": m.content}));
        return items;
    }
    if !m.content.is_empty() || m.tool_calls.is_none() {
        let kind = if m.role == "assistant" { "output_text" } else { "input_text" };
        items.push(json!({"id": id, "type": "message", "role": m.role, "status": "completed",
            "content": [{"type": kind, "text": m.content}]}));
    }
    for (k, call) in m.tool_calls.iter().flatten().enumerate() {
        let f = &call["function"];
        let arguments = match &f["arguments"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        items.push(
            json!({"id": format!("fc_{index}_{k}_{}", response.trim_start_matches("resp_")),
            "type": "function_call", "status": "completed",
            "call_id": call.get("id").cloned().unwrap_or(Value::Null),
            "name": f["name"], "arguments": arguments}),
        );
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    #[test]
    fn input_items_map_onto_chat_messages() {
        let input = json!([
            {"role": "developer", "content": "Be brief."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "use it"}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"},
            {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "call_2", "output": "noon"},
        ]);
        let out = input_messages(&input, &[]).unwrap();
        let roles: Vec<&str> = out.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "tool"]);
        assert_eq!(out[1].content, "weather?");
        assert_eq!(out[2].extra["thinking"], "use it");
        let calls = out[2].tool_calls.as_ref().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["function"]["arguments"]["city"], "Oslo");
        assert_eq!(out[3].extra["name"], "get_weather");
        assert_eq!(out[4].extra["tool_call_id"], "call_2");
        // A tool result for a call of an earlier (stored) turn finds its name there.
        let later =
            json!([{"type": "function_call_output", "call_id": "call_1", "output": "rain"}]);
        let out2 = input_messages(&later, &out).unwrap();
        assert_eq!(out2[0].extra["name"], "get_weather");
        assert_eq!(input_messages(&json!("hi"), &[]).unwrap()[0].role, "user");
    }

    #[test]
    fn malformed_input_is_refused_clearly() {
        let e = input_messages(&json!(3), &[]).unwrap_err();
        assert!(e.message.contains("input must be"), "{}", e.message);
        let e = input_messages(&json!([{"type": "item_reference", "id": "x"}]), &[]).unwrap_err();
        assert!(e.message.contains("item_reference"), "{}", e.message);
        let e = input_messages(
            &json!([{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]),
            &[],
        )
        .unwrap_err();
        assert!(e.message.contains("not a JSON object"), "{}", e.message);
        assert!(tools_of(Some(&[json!({"type": "web_search"})])).is_err());
        assert_eq!(
            tools_of(Some(&[
                json!({"type": "function", "name": "f", "parameters": {"type": "object"}})
            ]))
            .unwrap()
            .unwrap()[0],
            json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}})
        );
        assert_eq!(ToolChoice::of_openai(Some(&json!("required"))).unwrap(), ToolChoice::Required);
        assert!(ToolChoice::of_openai(Some(&json!("sometimes"))).is_err());
        assert!(text_format_grammar(Some(&json!({"format": {"type": "json_schema"}}))).is_err());
        assert!(
            text_format_grammar(Some(&json!({"format": {"type": "json_object"}})))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn events_follow_the_responses_sequence() {
        let mut b = OutputBuilder::new(json!({"id": "resp_1", "object": "response"}));
        let mut events = b.start();
        events.extend(b.thinking("hmm"));
        events.extend(b.text("Hel"));
        events.extend(b.text("lo"));
        let mut args = Map::new();
        args.insert("city".into(), json!("Oslo"));
        events.extend(b.tool_calls(&[ToolCall { name: "w".into(), arguments: args }]));
        let stats = Stats { prompt_tokens: 4, eval_count: 3, ..Default::default() };
        let (end, response) = b.finish(&stats);
        events.extend(end);
        let kinds: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.reasoning_text.delta",
                "response.reasoning_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let numbers: Vec<u64> =
            events.iter().map(|e| e.1["sequence_number"].as_u64().unwrap()).collect();
        assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
        assert!(events.iter().all(|(kind, data)| data["type"] == json!(kind)));
        assert_eq!(events[12].1["text"], "Hello");
        let output = response["output"].as_array().unwrap();
        assert_eq!(output.len(), 3);
        assert_eq!(output[0]["type"], "reasoning");
        assert_eq!(
            output[1]["content"][0],
            json!({"type": "output_text", "text": "Hello", "annotations": []})
        );
        assert_eq!(output[2]["type"], "function_call");
        assert_eq!(output[2]["arguments"], "{\"city\":\"Oslo\"}");
        assert!(output[2]["call_id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(response["status"], "completed");
        assert_eq!(response["usage"]["total_tokens"], 7);
        let m = b.assistant_message();
        assert_eq!(m.content, "Hello");
        assert_eq!(m.tool_calls.unwrap()[0]["id"], output[2]["call_id"]);
        // The token limit makes it incomplete.
        let mut b = OutputBuilder::new(json!({}));
        b.text("x");
        let stats = Stats { done_reason: Some(DoneReason::Length), ..Default::default() };
        let (events, response) = b.finish(&stats);
        assert_eq!(events.last().unwrap().0, "response.incomplete");
        assert_eq!(response["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(response["output"][0]["status"], "incomplete");
    }

    #[test]
    fn the_store_is_bounded_and_least_recently_used_goes_first() {
        let store = ResponseStore::default();
        for i in 0..MAX_STORED_RESPONSES + 5 {
            store.insert(format!("r{i}"), json!({"id": i}), vec![Message::new("user", "x")]);
            if i == 10 {
                // Using r0 after r10 came keeps it past the evictions of r1 to r5.
                assert!(store.get("r0").is_some());
            }
        }
        assert_eq!(store.len(), MAX_STORED_RESPONSES);
        assert!(store.get("r0").is_some());
        assert!(store.get("r1").is_none());
        assert!(store.get(&format!("r{}", MAX_STORED_RESPONSES + 4)).is_some());
    }
}
