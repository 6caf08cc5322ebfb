//! Chat templates: a model's `tokenizer.chat_template` (Hugging Face Jinja) rendered with
//! minijinja, the way `transformers.apply_chat_template` renders it.
//!
//! The environment mirrors Hugging Face's: `trim_blocks` and `lstrip_blocks` on, loop
//! controls (`break`/`continue`), Python string, dict and list methods through
//! `minijinja-contrib`'s pycompat (`.strip()`, `.startswith()`, `.items()`, ...),
//! `raise_exception(msg)`, `strftime_now(fmt)` (UTC), and a `tojson` filter that prints
//! like Python's `json.dumps` (`{"a": 1, "b": [1, 2]}`, `indent=`, `sort_keys=`,
//! `separators=`). `None`, `True` and `False` print as Python prints them.
//!
//! Templates come from model files, so they are untrusted: rendering runs with a fuel
//! limit (no endless loops) and without any loader (no file access).
//!
//! The rendered prompt already holds the BOS token text when the template writes
//! `bos_token`; tokenize it with special-token parsing on and without adding another BOS.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};
use serde::{Deserialize, Serialize};
use serde_json::Map;
use thiserror::Error;

/// The fallback template (ChatML) for models that ship none.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// The template name inside the environment.
const NAME: &str = "chat_template";
/// The stack a template is compiled on (see [`ChatTemplate::new`]).
const COMPILE_STACK: usize = 64 << 20;
/// The most operators, filters, attribute or index accesses and calls one `{{ }}` or
/// `{% %}` tag may chain. The real chat templates of llama.cpp's collection use at most
/// a few dozen in one tag.
pub const MAX_EXPRESSION_OPERATORS: usize = 1_000;

/// Refuses a template with a tag of more than [`MAX_EXPRESSION_OPERATORS`] operators
/// (string literals, comments and `{% raw %}` blocks skipped): a lexical bound on how
/// deep the tree of one expression can be.
pub fn check_expression_lengths(source: &str) -> Result<(), TemplateError> {
    let bytes = source.as_bytes();
    let mut i = 0;
    let mut line = 1;
    let mut in_raw = false;
    while i + 1 < bytes.len() {
        if bytes[i] == b'\n' {
            line += 1;
        }
        let open = (bytes[i], bytes[i + 1]);
        let close = match open {
            (b'{', b'{') if !in_raw => b'}',
            (b'{', b'%') => b'%',
            (b'{', b'#') if !in_raw => b'#',
            _ => {
                i += 1;
                continue;
            }
        };
        let start_line = line;
        let mut j = i + 2;
        let mut operators = 0usize;
        let mut quote: Option<u8> = None;
        let mut word = String::new();
        let tag_start = j;
        while j + 1 < bytes.len() {
            let b = bytes[j];
            if b == b'\n' {
                line += 1;
            }
            if let Some(q) = quote {
                if b == b'\\' {
                    j += 2;
                    continue;
                }
                if b == q {
                    quote = None;
                }
                j += 1;
                continue;
            }
            if b == close && bytes[j + 1] == b'}' {
                break;
            }
            if close != b'#' {
                if b.is_ascii_alphanumeric() || b == b'_' {
                    word.push(char::from(b));
                } else {
                    if matches!(word.as_str(), "and" | "or" | "not" | "in" | "is" | "if" | "else") {
                        operators += 1;
                    }
                    word.clear();
                    match b {
                        b'\'' | b'"' => quote = Some(b),
                        b'+' | b'-' | b'*' | b'/' | b'%' | b'~' | b'|' | b'.' | b'[' | b'('
                        | b'<' | b'>' | b'=' | b'!' => operators += 1,
                        _ => {}
                    }
                }
                if operators > MAX_EXPRESSION_OPERATORS {
                    return Err(TemplateError::Syntax(format!(
                        "line {start_line}: an expression chains more than \
                         {MAX_EXPRESSION_OPERATORS} operators, filters or accesses"
                    )));
                }
            }
            j += 1;
        }
        if close == b'%' {
            let tag = source.get(tag_start..j).unwrap_or_default();
            let tag = tag.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
            if tag == "raw" {
                in_raw = true;
            } else if tag == "endraw" {
                in_raw = false;
            }
        }
        i = j + 2;
    }
    Ok(())
}
/// Marks errors raised by the template itself through `raise_exception`.
const RAISED: &str = "raise_exception: ";
/// Instruction budget of one render: generous for long chats, finite for hostile loops.
const FUEL: u64 = 5_000_000;
/// The longest prompt a render may produce (far past any model's context).
pub const MAX_OUTPUT_BYTES: usize = 16 << 20;

/// A chat template that cannot be used or refused the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum TemplateError {
    /// The template does not parse.
    #[error("the model's chat template is not valid Jinja: {0}")]
    Syntax(String),
    /// The template called `raise_exception` (e.g. roles that do not alternate, a
    /// system message the model does not support).
    #[error("the model's chat template rejected the conversation: {0}")]
    Raised(String),
    /// Rendering failed (an undefined value used wrongly, out of fuel, ...).
    #[error("rendering the model's chat template failed: {0}")]
    Render(String),
}

/// One chat message as the template sees it.
///
/// Serialized into the template context with the same keys; `extra` carries any other
/// keys of the request's message (`tool_call_id`, `name`, `thinking`, ...) through.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text of the message.
    #[serde(default)]
    pub content: String,
    /// Images (base64), passed through; omitted from the context when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// Tool calls of an assistant message, passed through as given; omitted when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    /// Any other keys, passed through.
    #[serde(flatten)]
    pub extra: Map<String, serde_json::Value>,
}

impl ChatMessage {
    /// A message with a role and text content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into(), ..Default::default() }
    }
}

/// Everything a chat template is rendered with.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChatInput<'a> {
    /// The conversation.
    pub messages: &'a [ChatMessage],
    /// A system prompt (e.g. the Modelfile's SYSTEM); used only when the conversation does
    /// not start with a system message, and then put first.
    pub system: Option<&'a str>,
    /// Tool definitions (OpenAI/Ollama function schemas); `none` in the template when
    /// absent, as in Hugging Face.
    pub tools: Option<&'a [serde_json::Value]>,
    /// Whether to end with the opening of an assistant turn.
    pub add_generation_prompt: bool,
    /// The text of the model's BOS token (e.g. `<s>`), or "".
    pub bos_token: &'a str,
    /// The text of the model's EOS token (e.g. `</s>`), or "".
    pub eos_token: &'a str,
    /// Further template variables (`enable_thinking`, `date_string`, ...); the names
    /// above take precedence.
    pub extra: Option<&'a Map<String, serde_json::Value>>,
}

/// A [`ChatInput`] that owns its parts: what crosses a process boundary to be rendered
/// elsewhere (the server renders untrusted templates in a sandbox process).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OwnedChatInput {
    /// See [`ChatInput::messages`].
    pub messages: Vec<ChatMessage>,
    /// See [`ChatInput::system`].
    pub system: Option<String>,
    /// See [`ChatInput::tools`].
    pub tools: Option<Vec<serde_json::Value>>,
    /// See [`ChatInput::add_generation_prompt`].
    pub add_generation_prompt: bool,
    /// See [`ChatInput::bos_token`].
    pub bos_token: String,
    /// See [`ChatInput::eos_token`].
    pub eos_token: String,
    /// See [`ChatInput::extra`].
    pub extra: Option<Map<String, serde_json::Value>>,
}

impl OwnedChatInput {
    /// A copy of `input`.
    pub fn of(input: &ChatInput<'_>) -> Self {
        OwnedChatInput {
            messages: input.messages.to_vec(),
            system: input.system.map(str::to_owned),
            tools: input.tools.map(<[serde_json::Value]>::to_vec),
            add_generation_prompt: input.add_generation_prompt,
            bos_token: input.bos_token.to_owned(),
            eos_token: input.eos_token.to_owned(),
            extra: input.extra.cloned(),
        }
    }

    /// The borrowed view that [`ChatTemplate::render`] takes.
    pub fn as_input(&self) -> ChatInput<'_> {
        ChatInput {
            messages: &self.messages,
            system: self.system.as_deref(),
            tools: self.tools.as_deref(),
            add_generation_prompt: self.add_generation_prompt,
            bos_token: &self.bos_token,
            eos_token: &self.eos_token,
            extra: self.extra.as_ref(),
        }
    }
}

/// Gives each tool call of a message the `type` (`"function"`) and `id` that OpenAI's
/// shape has and Ollama's lacks, as llama.cpp does for its templates: templates that
/// write `tool_call.type` or `tool_call.id` (Apertus, DeepSeek-R1 distills, Apriel)
/// failed on an Ollama client's history with a 400. `count` numbers the calls of the
/// conversation for the ids made up.
fn normalize_tool_calls(message: &mut serde_json::Value, count: &mut usize) {
    let Some(calls) = message.get_mut("tool_calls").and_then(serde_json::Value::as_array_mut)
    else {
        return;
    };
    for call in calls.iter_mut().filter_map(serde_json::Value::as_object_mut) {
        call.entry("type").or_insert_with(|| "function".into());
        call.entry("id").or_insert_with(|| format!("call_{count}").into());
        *count += 1;
    }
}

/// A compiled chat template.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    is_fallback: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("is_fallback", &self.is_fallback)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles a Hugging Face chat template (the `tokenizer.chat_template` string).
    ///
    /// minijinja parses a chain of operators, filters, attributes, indexes or calls
    /// (`1+1+...`, `x|upper|upper...`, `a.a.a...`) in a loop, but the tree it builds is as
    /// deep as the chain is long, and compiling that tree recurses: a 20 KB template of
    /// 10,000 `+1` overflowed a 2 MiB stack and aborted the whole server. So an
    /// expression is refused past [`MAX_EXPRESSION_OPERATORS`] operators
    /// ([`check_expression_lengths`]), and the compile runs on a thread of
    /// [`COMPILE_STACK`] bytes, far more than what is left can use.
    pub fn new(source: impl Into<String>) -> Result<Self, TemplateError> {
        let source = source.into();
        check_expression_lengths(&source)?;
        let compile = || {
            let mut env = environment();
            env.add_template_owned(NAME, source.clone())
                .map_err(|e| TemplateError::Syntax(describe(&e)))?;
            Ok::<_, TemplateError>(env)
        };
        let env = std::thread::scope(|scope| {
            let compiler = std::thread::Builder::new()
                .name("corral-template-compile".into())
                .stack_size(COMPILE_STACK)
                .spawn_scoped(scope, compile)
                .map_err(|e| {
                    TemplateError::Render(format!("cannot start a compile thread: {e}"))
                })?;
            compiler.join().unwrap_or_else(|_| {
                Err(TemplateError::Syntax("the template compiler failed on it".into()))
            })
        })?;
        Ok(ChatTemplate { env, source, is_fallback: false })
    }

    /// The ChatML fallback template.
    pub fn chatml() -> Self {
        let mut env = environment();
        // The constant parses; covered by the tests.
        let _ = env.add_template_owned(NAME, CHATML_TEMPLATE);
        ChatTemplate { env, source: CHATML_TEMPLATE.to_owned(), is_fallback: true }
    }

    /// The model's template, or ChatML when the model has none (missing or blank).
    pub fn from_model(chat_template: Option<&str>) -> Result<Self, TemplateError> {
        match chat_template {
            Some(t) if !t.trim().is_empty() => Self::new(t),
            _ => Ok(Self::chatml()),
        }
    }

    /// The template's source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True when this is the ChatML fallback.
    pub fn is_fallback(&self) -> bool {
        self.is_fallback
    }

    /// Renders the prompt for a conversation.
    pub fn render(&self, input: &ChatInput<'_>) -> Result<String, TemplateError> {
        let mut messages: Vec<serde_json::Value> = Vec::with_capacity(input.messages.len() + 1);
        if let Some(system) = input.system
            && input.messages.first().is_none_or(|m| m.role != "system")
        {
            messages.push(serde_json::json!({"role": "system", "content": system}));
        }
        let mut calls = 0usize;
        for m in input.messages {
            let mut v =
                serde_json::to_value(m).map_err(|e| TemplateError::Render(e.to_string()))?;
            normalize_tool_calls(&mut v, &mut calls);
            messages.push(v);
        }
        let mut ctx = input.extra.cloned().unwrap_or_default();
        ctx.insert("messages".into(), messages.into());
        ctx.insert(
            "tools".into(),
            input.tools.map_or(serde_json::Value::Null, |t| serde_json::Value::from(t.to_vec())),
        );
        ctx.insert("add_generation_prompt".into(), input.add_generation_prompt.into());
        ctx.insert("bos_token".into(), input.bos_token.into());
        ctx.insert("eos_token".into(), input.eos_token.into());

        let tmpl = self.env.get_template(NAME).map_err(|e| TemplateError::Render(describe(&e)))?;
        let mut out = BoundedOutput { text: Vec::new(), full: false };
        // minijinja itself can panic on odd input (`''[::-1]` indexes an empty string, found
        // by the fuzz target): a panic is a failed render, not a dead thread.
        let rendered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tmpl.render_captured_to(Value::from_serialize(&ctx), &mut out).map(|_| ())
        }));
        let rendered = match rendered {
            Ok(r) => r,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic");
                return Err(TemplateError::Render(format!("the template engine failed: {what}")));
            }
        };
        match rendered {
            Ok(_) => String::from_utf8(out.text).map_err(|e| TemplateError::Render(e.to_string())),
            Err(_) if out.full => Err(TemplateError::Render(format!(
                "the rendered prompt is longer than {} MiB",
                MAX_OUTPUT_BYTES >> 20
            ))),
            Err(e) => Err(match e.detail() {
                Some(d) if e.kind() == ErrorKind::InvalidOperation && d.starts_with(RAISED) => {
                    TemplateError::Raised(d[RAISED.len()..].to_owned())
                }
                _ => TemplateError::Render(describe(&e)),
            }),
        }
    }
}

/// Collects a render's output and refuses bytes past [`MAX_OUTPUT_BYTES`], so a template
/// that prints in an endless-looking loop stops at the bound instead of at the fuel limit.
struct BoundedOutput {
    text: Vec<u8>,
    full: bool,
}

impl std::io::Write for BoundedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + buf.len() > MAX_OUTPUT_BYTES {
            self.full = true;
            return Err(std::io::Error::other("output bound reached"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A minijinja error in one line: kind, detail and line.
fn describe(e: &Error) -> String {
    let mut s = e.kind().to_string();
    if let Some(d) = e.detail() {
        let _ = write!(s, ": {d}");
    }
    if let Some(line) = e.line() {
        let _ = write!(s, " (line {line})");
    }
    s
}

/// The Hugging Face-like environment every template renders in.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_fuel(Some(FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(|out, state, value| {
        // Jinja2 prints Python's reprs for these.
        if value.is_none() {
            out.write_str("None").map_err(Error::from)
        } else if value.kind() == ValueKind::Bool {
            out.write_str(if value.is_true() { "True" } else { "False" }).map_err(Error::from)
        } else {
            minijinja::escape_formatter(out, state, value)
        }
    });
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, format!("{RAISED}{msg}")))
    });
    env.add_function("strftime_now", |fmt: String| -> String {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        strftime(&fmt, secs)
    });
    env.add_filter("tojson", tojson);
    env.add_function("namespace", lists::namespace);
    env
}

/// `tojson` as Hugging Face defines it: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`.
fn tojson(_state: &State, value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let _: Option<Value> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;

    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(n.clamp(0, 64) as usize)),
            (None, Some(s)) => Some(s.to_owned()),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ));
            }
        },
    };
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair of strings",
            ));
        }
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let mut json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    if sort_keys == Some(true) {
        sort_json(&mut json);
    }
    let mut out = Vec::new();
    let fmt = PyJson { indent, item_sep, key_sep, depth: 0, has_value: false };
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    json.serialize(&mut ser)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let s = String::from_utf8(out)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    Ok(Value::from_safe_string(s))
}

/// Sorts object keys recursively (keeps working even if `serde_json`'s `preserve_order`
/// is on somewhere in the build).
fn sort_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<(String, serde_json::Value)> =
                std::mem::take(map).into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (k, mut val) in entries {
                sort_json(&mut val);
                map.insert(k, val);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(sort_json),
        _ => {}
    }
}

/// A serde_json formatter that writes what Python's `json.dumps` writes.
struct PyJson {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    depth: usize,
    has_value: bool,
}

impl PyJson {
    fn newline<W: ?Sized + std::io::Write>(&self, w: &mut W) -> std::io::Result<()> {
        if let Some(ind) = &self.indent {
            w.write_all(b"\n")?;
            for _ in 0..self.depth {
                w.write_all(ind.as_bytes())?;
            }
        }
        Ok(())
    }

    /// `[` or `{`: one level deeper, nothing in it yet.
    fn open<W: ?Sized + std::io::Write>(&mut self, w: &mut W, b: &[u8]) -> std::io::Result<()> {
        self.depth += 1;
        self.has_value = false;
        w.write_all(b)
    }

    /// `]` or `}`: on its own line (when indenting) unless the container was empty.
    fn close<W: ?Sized + std::io::Write>(&mut self, w: &mut W, b: &[u8]) -> std::io::Result<()> {
        self.depth -= 1;
        if self.has_value {
            self.newline(w)?;
        }
        w.write_all(b)
    }

    /// Before an array item or an object key: the separator, then the new line.
    fn item<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if !first {
            w.write_all(self.item_sep.as_bytes())?;
        }
        self.newline(w)
    }
}

impl serde_json::ser::Formatter for PyJson {
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.open(w, b"[")
    }
    fn end_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.close(w, b"]")
    }
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.item(w, first)
    }
    fn end_array_value<W: ?Sized + std::io::Write>(&mut self, _w: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }
    fn begin_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.open(w, b"{")
    }
    fn end_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.close(w, b"}")
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.item(w, first)
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(self.key_sep.as_bytes())
    }
    fn end_object_value<W: ?Sized + std::io::Write>(&mut self, _w: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] =
    ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// A small `strftime` over a UTC Unix time: `%d %m %Y %y %b %B %a %A %H %M %S %j %%`
/// (and `%-d`, `%-m`); other directives are copied through.
fn strftime(fmt: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    // 1970-01-01 was a Thursday (index 3 with Monday = 0).
    let wd = (days + 3).rem_euclid(7) as usize;
    let yday = days - days_from_civil(y, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let no_pad = chars.peek() == Some(&'-');
        if no_pad {
            chars.next();
        }
        let Some(spec) = chars.next() else {
            out.push('%');
            break;
        };
        let num = |n: i64, out: &mut String| {
            if no_pad {
                let _ = write!(out, "{n}");
            } else {
                let _ = write!(out, "{n:02}");
            }
        };
        match spec {
            'd' => num(d as i64, &mut out),
            'm' => num(m as i64, &mut out),
            'Y' => {
                let _ = write!(out, "{y}");
            }
            'y' => num(y.rem_euclid(100), &mut out),
            'b' => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            'B' => out.push_str(MONTHS[(m - 1) as usize]),
            'a' => out.push_str(&DAYS[wd][..3]),
            'A' => out.push_str(DAYS[wd]),
            'H' => num(secs / 3600, &mut out),
            'M' => num(secs / 60 % 60, &mut out),
            'S' => num(secs % 60, &mut out),
            'j' => {
                let _ = write!(out, "{yday:03}");
            }
            '%' => out.push('%'),
            other => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                out.push(other);
            }
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

mod lists;
#[cfg(test)]
mod tests;
