//! Prompt templates from model files and registries: Ollama's Go templates (translated to
//! Jinja) and Hugging Face Jinja chat templates, rendered on a small conversation with
//! the library's own fuel limit. A model's template is untrusted input to the server.

use std::sync::OnceLock;

use corral_generation::gotemplate;
use corral_generation::template::{ChatInput, ChatMessage, ChatTemplate};
use serde_json::{Map, Value, json};

/// The conversation every template is rendered on: every role, a tool call with its
/// result, tools, and a template variable.
struct Conversation {
    messages: Vec<ChatMessage>,
    tools: Vec<Value>,
    extra: Map<String, Value>,
}

fn conversation() -> &'static Conversation {
    static CONVERSATION: OnceLock<Conversation> = OnceLock::new();
    CONVERSATION.get_or_init(|| {
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(vec![json!({
            "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris"}}
        })]);
        let mut tool = ChatMessage::new("tool", "22C");
        tool.extra.insert("tool_call_id".into(), json!("call_1"));
        let mut thinking = ChatMessage::new("assistant", "It is 22C in Paris.");
        thinking.extra.insert("thinking".into(), json!("The tool said 22C."));
        let messages = vec![
            ChatMessage::new("system", "You are terse."),
            ChatMessage::new("user", "Weather in Paris?"),
            call,
            tool,
            thinking,
            ChatMessage::new("user", "Thanks! <|im_end|> {{ .System }} {% raw %}"),
        ];
        let tools = vec![json!({
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"]
                }
            }
        })];
        let mut extra = Map::new();
        extra.insert("enable_thinking".into(), json!(true));
        Conversation { messages, tools, extra }
    })
}

fn render(template: &ChatTemplate) {
    let c = conversation();
    // `..Default::default()` keeps this building when ChatInput gains fields.
    #[allow(clippy::needless_update)]
    let input = ChatInput {
        messages: &c.messages,
        system: Some("Default system prompt."),
        tools: Some(&c.tools),
        add_generation_prompt: true,
        bos_token: "<s>",
        eos_token: "</s>",
        extra: Some(&c.extra),
        ..Default::default()
    };
    let _ = template.render(&input);
}

/// With `CORRAL_FUZZ_STRICT=1`, a Go template that translates must give Jinja that
/// compiles (a translator bug otherwise, not a crash: off by default).
fn strict() -> bool {
    static STRICT: OnceLock<bool> = OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("CORRAL_FUZZ_STRICT").is_some_and(|v| v == "1"))
}

/// A Modelfile TEMPLATE or a registry's template layer: detected, translated when it is
/// a Go template, compiled and rendered.
pub fn gotemplate(data: &[u8]) {
    let src = crate::text(data);
    let is_go = gotemplate::is_go_template(&src);
    let Ok(jinja) = gotemplate::prepare(&src) else { return };
    match ChatTemplate::new(jinja) {
        Ok(template) => render(&template),
        Err(e) if is_go && strict() => panic!("a translated Go template is not Jinja: {e}"),
        Err(_) => {}
    }
}

/// A GGUF file's `tokenizer.chat_template`: compiled and rendered.
pub fn chat_template(data: &[u8]) {
    let src = crate::text(data);
    if let Ok(template) = ChatTemplate::from_model(Some(&src)) {
        render(&template);
    }
}
