//! Prompts: chat templates rendered (in a sandbox process when the binary installed one,
//! see [`crate::template_sandbox`]) and tokenized for a model.

use anyhow::{Context as _, Result};
use corral_generation::{
    known_templates::{self, TemplateChoice},
    template::{ChatInput, ChatTemplate},
    thinking::Think,
};

use corral_plugin_host::Model;

/// A chat message (role, content, images, tool calls).
pub use corral_generation::template::ChatMessage as Message;

/// A model's chat template with its special-token texts.
pub struct Templater {
    /// The compiled template (the model's, or one chosen for it when it has none).
    pub template: ChatTemplate,
    /// Where the template came from, in words (for logs and `corral show`).
    pub origin: String,
    /// Whose template it is, which decides the sandboxes it renders in.
    pub sandbox_origin: crate::template_sandbox::Origin,
    bos_text: String,
    eos_text: String,
}

/// Whether `text` is a single token of `model`'s vocabulary.
pub fn has_token(model: &Model, text: &str) -> bool {
    matches!(model.tokenize(text, false, true).as_deref(), Ok([t])
        if model.token_bytes(*t).is_ok_and(|b| b == text.as_bytes()))
}

/// The template for a model file without one, chosen from its vocabulary and
/// architecture ([`corral_generation::known_templates`]).
pub fn choose_template(model: &Model) -> TemplateChoice {
    known_templates::choose(&model.meta.architecture, &|t| has_token(model, t))
}

/// A GGUF file's chat template and where it came from, without loading it: the one
/// [`Templater::for_model`] would use ([`effective_template`]). `None` for a file that is
/// not a readable GGUF (an ONNX model, say): its engine reports the template when it loads.
pub fn file_template(path: &std::path::Path) -> Option<(String, String)> {
    let gguf = corral_gguf::reader::GgufFile::open(path).ok()?;
    let choose = || {
        let tokens: std::collections::HashSet<&str> = match gguf.get("tokenizer.ggml.tokens") {
            Some(corral_gguf::Value::Array { values, .. }) => {
                values.iter().filter_map(corral_gguf::Value::as_str).collect()
            }
            _ => std::collections::HashSet::new(),
        };
        let arch = gguf.get_str("general.architecture").unwrap_or_default();
        known_templates::choose(arch, &|t| tokens.contains(t))
    };
    let (template, origin) =
        effective_template(gguf.get_str("tokenizer.chat_template"), choose).ok()?;
    Some((template.source().to_string(), origin))
}

/// The chat template a GGUF model runs with, compiled, and where it came from in words:
/// its own (`own`, `tokenizer.chat_template`) when it has one that compiles, else the
/// one `choose` picks from its vocabulary and architecture. A file whose own template
/// does not compile (a syntax error, nesting past the parser's limit) falls back as
/// llama.cpp falls back to its built-in formats, so the model still chats, generates raw
/// and embeds; the origin says so.
fn effective_template(
    own: Option<&str>,
    choose: impl FnOnce() -> TemplateChoice,
) -> Result<(ChatTemplate, String)> {
    let broken = match own.filter(|t| !t.trim().is_empty()) {
        Some(own) => match ChatTemplate::new(own) {
            Ok(t) => return Ok((t, "the model file's template".into())),
            Err(e) => Some(e),
        },
        None => None,
    };
    let choice = choose();
    let origin = match broken {
        Some(why) => format!(
            "{}, in place of the model file's template, which does not compile: {why}",
            choice.name
        ),
        None => choice.reason,
    };
    let template = ChatTemplate::new(choice.source).context("a built-in chat template")?;
    Ok((template, origin))
}

impl Templater {
    /// The template of `model`: its own, or one chosen for it from its vocabulary and
    /// architecture when the file carries none or one that does not compile
    /// ([`effective_template`]).
    pub fn for_model(model: &Model) -> Result<Templater> {
        let own = model.chat_template().filter(|t| !t.trim().is_empty());
        let (template, origin) = effective_template(own, || choose_template(model))?;
        match own {
            Some(own) if own != template.source() => tracing::warn!("chat template: {origin}"),
            Some(_) => {}
            None => tracing::info!("chat template: {origin}"),
        }
        Ok(Self::with_template(model, template, origin))
    }

    /// A template from `source` (a Modelfile's TEMPLATE, say) for `model`; the model's own
    /// (or a chosen one) when `source` is `None` or blank.
    pub fn with_source(model: &Model, source: Option<&str>) -> Result<Templater> {
        match source.filter(|t| !t.trim().is_empty()) {
            Some(t) => Self::compile(model, t, "the TEMPLATE given for the model".into()),
            None => Self::for_model(model),
        }
    }

    /// A template sent with one request (`/api/generate`'s `template`, Jinja already).
    /// A blank one is the model's own ([`Self::with_source`]).
    pub fn for_request(model: &Model, source: &str) -> Result<Templater> {
        let mut templater = Self::with_source(model, Some(source))?;
        if !source.trim().is_empty() {
            templater.origin = "the request's template".into();
            templater.sandbox_origin = crate::template_sandbox::Origin::Request;
        }
        Ok(templater)
    }

    fn compile(model: &Model, source: &str, origin: String) -> Result<Templater> {
        let template =
            ChatTemplate::new(source).context("the model's chat template does not compile")?;
        Ok(Self::with_template(model, template, origin))
    }

    fn with_template(model: &Model, template: ChatTemplate, origin: String) -> Templater {
        let text = |t: Option<u32>| {
            t.and_then(|t| model.token_bytes(t).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        Templater {
            template,
            origin,
            sandbox_origin: crate::template_sandbox::Origin::Model,
            bos_text: text(model.special.bos),
            eos_text: text(model.special.eos),
        }
    }

    /// Renders a conversation.
    pub fn render(
        &self,
        messages: &[Message],
        system: Option<&str>,
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.render_thinking(messages, system, tools, add_generation_prompt, None)
    }

    /// Renders a conversation with the request's `think` setting as the template's
    /// `enable_thinking` (what Hugging Face thinking templates read, and what translated
    /// Ollama templates turn into `.Think` / `.IsThinkSet`) and an effort level as
    /// `reasoning_effort` (gpt-oss's templates; `.ThinkLevel` in Ollama's); `None` leaves
    /// both undefined.
    pub fn render_thinking(
        &self,
        messages: &[Message],
        system: Option<&str>,
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
        think: Option<Think>,
    ) -> Result<String> {
        let extra: Option<serde_json::Map<String, serde_json::Value>> = think.map(|t| {
            let mut m = serde_json::Map::new();
            m.insert("enable_thinking".into(), serde_json::Value::Bool(t.enabled()));
            if let Some(e) = t.effort() {
                m.insert("reasoning_effort".into(), serde_json::Value::from(e.as_str()));
            }
            m
        });
        let input = ChatInput {
            messages,
            system,
            tools,
            add_generation_prompt,
            bos_token: &self.bos_text,
            eos_token: &self.eos_text,
            extra: extra.as_ref(),
        };
        match crate::template_sandbox::render(&self.template, &input, self.sandbox_origin) {
            Ok(text) => Ok(text),
            // The template's own failure keeps its type: the request's fault (400).
            Err(crate::template_sandbox::SandboxError::Template(e)) => Err(e.into()),
            Err(e) => Err(e.into()),
        }
    }

    /// Tokenizes rendered text: special tokens parsed, BOS added unless the template
    /// already wrote it.
    pub fn tokenize(&self, model: &Model, text: &str) -> Result<Vec<u32>> {
        let add_special = self.bos_text.is_empty() || !text.starts_with(&self.bos_text);
        Ok(model.tokenize(text, add_special, true)?)
    }

    /// Tokenizes rendered text that continues earlier tokens (`/api/generate`'s
    /// `context`): no BOS, neither the tokenizer's nor a template's leading BOS text, as
    /// Ollama tokenizes the earlier text and the new together with one BOS at the start.
    pub fn tokenize_continuation(&self, model: &Model, text: &str) -> Result<Vec<u32>> {
        let text = if self.bos_text.is_empty() {
            text
        } else {
            text.strip_prefix(self.bos_text.as_str()).unwrap_or(text)
        };
        Ok(model.tokenize(text, false, true)?)
    }

    /// Renders and tokenizes a conversation.
    pub fn tokenize_chat(
        &self,
        model: &Model,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let text = self.render(messages, None, None, add_generation_prompt)?;
        self.tokenize(model, &text)
    }
}
