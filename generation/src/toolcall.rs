//! Tool calls in a model's output, as Ollama and OpenAI clients receive them.
//!
//! When a chat request offers tools, models answer a call with a JSON object naming the
//! tool and its arguments, wrapped the way their template taught them: Qwen and Hermes
//! `<tool_call>{...}</tool_call>`, Mistral `[TOOL_CALLS] [{...}]`, Llama 3.1
//! `<|python_tag|>{...}` or bare JSON, sometimes in a Markdown code fence.
//! [`ToolCallParser`] watches the streamed text: output that starts with one of those
//! openers is held back until the end and parsed into [`ToolCall`]s; anything else
//! streams through at once. Held-back text that does not parse as calls of offered tools
//! is returned as ordinary content, so nothing the model wrote is lost.

use serde_json::{Map, Value};

/// One call of a tool: its name and arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The tool's (function's) name, one of those offered.
    pub name: String,
    /// The arguments, a JSON object.
    pub arguments: Map<String, Value>,
}

/// Texts a tool call may start with, after leading whitespace.
const OPENERS: [&str; 6] = ["<tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "```", "{", "["];
/// Wrapper texts removed before the JSON is parsed.
const WRAPPERS: [&str; 7] = [
    "<tool_call>",
    "</tool_call>",
    "[TOOL_CALLS]",
    "<|python_tag|>",
    "<|eom_id|>",
    "```json",
    "```",
];
/// Most text held back while undecided or inside a call (bounds memory on a runaway).
const MAX_HELD: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Only whitespace or a prefix of an opener so far.
    Undecided,
    /// Ordinary text: everything passes through.
    Text,
    /// Started like a tool call: held until the end.
    Call,
}

/// Splits streamed model output into content and tool calls.
#[derive(Debug, Clone)]
pub struct ToolCallParser {
    names: Vec<String>,
    held: String,
    mode: Mode,
}

impl ToolCallParser {
    /// A parser for the tools of a request (`[{"type": "function", "function": {"name":
    /// ...}}]`, or objects with a top-level `name`). Calls of other names are not calls.
    pub fn new(tools: &[Value]) -> Self {
        let names = tools
            .iter()
            .filter_map(|t| {
                t.get("function")
                    .and_then(|f| f.get("name"))
                    .or_else(|| t.get("name"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect();
        ToolCallParser { names, held: String::new(), mode: Mode::Undecided }
    }

    /// Feeds the next piece of output; returns the content that may be sent now.
    pub fn push(&mut self, text: &str) -> String {
        match self.mode {
            Mode::Text => return text.to_string(),
            Mode::Call => {
                if self.held.len() + text.len() > MAX_HELD {
                    // Too long for a call: give up holding and let it stream.
                    self.mode = Mode::Text;
                    return std::mem::take(&mut self.held) + text;
                }
                self.held.push_str(text);
                // A value can only have ended where a bracket closed (or a line ended,
                // which shows text that is not JSON soon enough).
                if text.contains(['}', ']', '\n']) && !self.first_value_may_be_a_call() {
                    self.mode = Mode::Text;
                    return std::mem::take(&mut self.held);
                }
                return String::new();
            }
            Mode::Undecided => {}
        }
        self.held.push_str(text);
        let start = self.held.trim_start();
        if start.is_empty() {
            return String::new();
        }
        if OPENERS.iter().any(|o| start.starts_with(o)) {
            self.mode = Mode::Call;
            if self.held.contains(['}', ']', '\n']) && !self.first_value_may_be_a_call() {
                self.mode = Mode::Text;
                return std::mem::take(&mut self.held);
            }
            String::new()
        } else if OPENERS.iter().any(|o| o.starts_with(start)) {
            String::new()
        } else {
            self.mode = Mode::Text;
            std::mem::take(&mut self.held)
        }
    }

    /// Whether the held text can still turn out to be calls: its first JSON value (after
    /// wrappers) is unfinished, or is a call of an offered tool. A finished value that
    /// is not one, or text that is not JSON, means the answer is ordinary content and
    /// may stream.
    fn first_value_may_be_a_call(&self) -> bool {
        let mut rest = self.held.as_str();
        loop {
            rest = rest.trim_start();
            match WRAPPERS.iter().find(|w| rest.starts_with(**w)) {
                Some(w) => rest = &rest[w.len()..],
                None => break,
            }
        }
        if rest.is_empty() {
            return true;
        }
        match serde_json::Deserializer::from_str(rest).into_iter::<Value>().next() {
            None => true,
            Some(Err(e)) => e.is_eof(),
            Some(Ok(Value::Array(items))) => {
                items.iter().all(|i| call_of(i, &self.names).is_some())
            }
            Some(Ok(v)) => call_of(&v, &self.names).is_some(),
        }
    }

    /// Ends the output: the content not yet returned, and the tool calls. Text held as a
    /// possible call that is not one comes back as content.
    pub fn finish(self) -> (String, Vec<ToolCall>) {
        if self.mode == Mode::Text {
            return (self.held, Vec::new());
        }
        match parse_calls(&self.held, &self.names) {
            Some(calls) if !calls.is_empty() => (String::new(), calls),
            _ => (self.held, Vec::new()),
        }
    }
}

/// The calls in `text`, or `None` when it is not entirely calls of offered tools. Wrapper
/// tags and code fences are skipped only between JSON values, never inside one, so an
/// argument that contains such text stays as written.
fn parse_calls(text: &str, names: &[String]) -> Option<Vec<ToolCall>> {
    let mut calls = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return Some(calls);
        }
        if let Some(w) = WRAPPERS.iter().find(|w| rest.starts_with(**w)) {
            rest = &rest[w.len()..];
            continue;
        }
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let value = values.next()?.ok()?;
        rest = &rest[values.byte_offset()..];
        match value {
            Value::Array(items) => {
                for item in items {
                    calls.push(call_of(&item, names)?);
                }
            }
            item => calls.push(call_of(&item, names)?),
        }
    }
}

/// One call object: `{"name", "arguments"|"parameters"}` or `{"function": {...}}`; the
/// arguments may be an object or a string holding one.
fn call_of(v: &Value, names: &[String]) -> Option<ToolCall> {
    let obj = v.as_object()?;
    let obj = match obj.get("function").and_then(Value::as_object) {
        Some(f) if !obj.contains_key("name") => f,
        _ => obj,
    };
    let name = obj.get("name")?.as_str()?.to_string();
    if !names.contains(&name) {
        return None;
    }
    let arguments = match obj.get("arguments").or_else(|| obj.get("parameters")) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s).ok()? {
            Value::Object(m) => m,
            _ => return None,
        },
        Some(_) => return None,
    };
    Some(ToolCall { name, arguments })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tools() -> Vec<Value> {
        vec![
            json!({"type": "function", "function": {"name": "get_weather",
                "parameters": {"type": "object"}}}),
            json!({"type": "function", "function": {"name": "add"}}),
        ]
    }

    /// Feeds `pieces` one by one; (content streamed, final content, calls).
    fn run(pieces: &[&str]) -> (String, String, Vec<ToolCall>) {
        let mut p = ToolCallParser::new(&tools());
        let mut streamed = String::new();
        for piece in pieces {
            streamed.push_str(&p.push(piece));
        }
        let (rest, calls) = p.finish();
        (streamed, rest, calls)
    }

    fn weather(city: &str) -> ToolCall {
        ToolCall {
            name: "get_weather".into(),
            arguments: json!({"city": city}).as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn plain_text_streams_at_once() {
        let (streamed, rest, calls) = run(&["Hello", ", world"]);
        assert_eq!(streamed, "Hello, world");
        assert_eq!(rest, "");
        assert!(calls.is_empty());
    }

    #[test]
    fn qwen_hermes_tags_split_across_pieces() {
        let (streamed, rest, calls) = run(&[
            "\n<to",
            "ol_call>\n{\"name\": \"get_",
            "weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
            "<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}</tool_call>",
        ]);
        assert_eq!(streamed, "");
        assert_eq!(rest, "");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0], weather("Paris"));
        assert_eq!(calls[1].name, "add");
        assert_eq!(calls[1].arguments["b"], 2);
    }

    #[test]
    fn mistral_llama_and_fenced_forms() {
        let (_, _, calls) = run(&[
            "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}]",
        ]);
        assert_eq!(calls, vec![weather("Oslo")]);
        let (_, _, calls) = run(&[
            "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\"}}",
        ]);
        assert_eq!(calls, vec![weather("Rome")]);
        let (_, _, calls) = run(&[
            "```json\n{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Lima\\\"}\"}\n```",
        ]);
        assert_eq!(calls, vec![weather("Lima")]);
        let (_, _, calls) = run(&[
            "{\"function\": {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Kyiv\"}}}",
        ]);
        assert_eq!(calls, vec![weather("Kyiv")]);
    }

    #[test]
    fn json_that_is_not_a_call_of_an_offered_tool_is_content() {
        for text in [
            "{\"name\": \"rm_rf\", \"arguments\": {}}",
            "{\"answer\": 42}",
            "[1, 2, 3]",
            "{\"name\": \"add\", \"arguments\": {\"a\": 1}} and some prose",
            "<tool_call>{not json</tool_call>",
        ] {
            let (streamed, rest, calls) = run(&[text]);
            assert!(calls.is_empty(), "{text}");
            assert_eq!(streamed + &rest, text, "nothing lost");
        }
    }

    #[test]
    fn a_prefix_of_an_opener_waits_then_streams_when_it_turns_out_to_be_text() {
        let mut p = ToolCallParser::new(&tools());
        assert_eq!(p.push("  <to"), "");
        assert_eq!(p.push("day> is"), "  <today> is");
        assert_eq!(p.push(" fine"), " fine");
        assert_eq!(p.finish(), (String::new(), Vec::new()));
    }

    #[test]
    fn wrapper_text_inside_arguments_is_kept() {
        let text = "<tool_call>{\"name\": \"add\", \"arguments\": {\"code\": \"```x``` <tool_call>\"}}</tool_call>";
        let (_, _, calls) = run(&[text]);
        assert_eq!(calls[0].arguments["code"], "```x``` <tool_call>");
    }

    #[test]
    fn json_that_is_not_a_call_streams_once_its_first_value_ends() {
        let mut p = ToolCallParser::new(&tools());
        assert_eq!(p.push("{\"answer\": "), "");
        assert_eq!(p.push("42}"), "{\"answer\": 42}", "released when the value closes");
        assert_eq!(p.push(" more"), " more");
        let mut p = ToolCallParser::new(&tools());
        assert_eq!(p.push("```py"), "", "a fence may hold JSON");
        assert_eq!(p.push("thon\nprint(1)"), "```python\nprint(1)", "not JSON: released");
        // A call keeps being held.
        let mut p = ToolCallParser::new(&tools());
        assert_eq!(p.push("{\"name\": \"add\", \"arguments\": {}}"), "");
        assert_eq!(p.finish().1.len(), 1);
    }

    #[test]
    fn tools_named_at_top_level_are_accepted() {
        let mut p = ToolCallParser::new(&[json!({"name": "get_weather"})]);
        p.push("{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Bern\"}}");
        assert_eq!(p.finish().1, vec![weather("Bern")]);
    }
}
