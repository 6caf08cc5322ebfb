//! Prompts: chat templates rendered (in a sandbox process when the binary installed one,
//! see [`crate::template_sandbox`]) and tokenized for a model.

use anyhow::{Context as _, Result};
use corral_generation::template::{ChatInput, ChatTemplate};

use corral_plugin_host::Model;

/// A chat message (role, content, images, tool calls).
pub use corral_generation::template::ChatMessage as Message;

/// A model's chat template with its special-token texts.
pub struct Templater {
    /// The compiled template (the model's, or ChatML when it has none).
    pub template: ChatTemplate,
    bos_text: String,
    eos_text: String,
}

impl Templater {
    /// The template of `model` (`tokenizer.chat_template`), or ChatML as a fallback.
    pub fn for_model(model: &Model) -> Result<Templater> {
        Self::with_source(model, model.chat_template())
    }

    /// A template from `source` (a Modelfile's TEMPLATE, say) for `model`.
    pub fn with_source(model: &Model, source: Option<&str>) -> Result<Templater> {
        let template = ChatTemplate::from_model(source)
            .context("the model's chat template does not compile")?;
        let text = |t: Option<u32>| {
            t.and_then(|t| model.token_bytes(t).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        Ok(Templater {
            template,
            bos_text: text(model.special.bos),
            eos_text: text(model.special.eos),
        })
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
    /// Ollama templates turn into `.Think` / `.IsThinkSet`); `None` leaves it undefined.
    pub fn render_thinking(
        &self,
        messages: &[Message],
        system: Option<&str>,
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
        think: Option<bool>,
    ) -> Result<String> {
        let extra: Option<serde_json::Map<String, serde_json::Value>> = think.map(|t| {
            [("enable_thinking".to_string(), serde_json::Value::Bool(t))].into_iter().collect()
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
        match crate::template_sandbox::render(&self.template, &input) {
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
