//! Chat templates for model files that carry none, chosen from the vocabulary and the
//! architecture: one table, [`KNOWN_TEMPLATES`].
//!
//! Many GGUF files (quantized by hand, converted by older scripts, or cut down like the
//! Gemma 3 270M file people run) have no `tokenizer.chat_template`. Rendering ChatML for
//! them makes a model that never saw `<|im_start|>` answer nonsense, so the host asks this
//! table instead: each family names the special tokens its format is written in (Gemma's
//! `<start_of_turn>`, Llama 3's header tokens, ...) and the architectures that use it. The
//! first family whose tokens the vocabulary holds wins; else the first whose architecture
//! matches; else Ollama's bare-prompt template ([`BARE_PROMPT`]), which sends the user's
//! text as it is.
//!
//! The templates follow the families' own templates for system prompts and multiple turns
//! (without tools: a model whose file lacks a template rarely does tool calls, and a
//! Modelfile TEMPLATE can always say otherwise).

/// One family of chat formats.
#[derive(Debug, Clone, Copy)]
pub struct KnownTemplate {
    /// Short name, as `corral show` prints it (`gemma`, `llama3`, `chatml`, ...).
    pub name: &'static str,
    /// Token texts that must all be single tokens of the vocabulary.
    pub markers: &'static [&'static str],
    /// Architectures (GGUF `general.architecture`, compared by prefix) that use it.
    pub architectures: &'static [&'static str],
    /// The Jinja source.
    pub source: &'static str,
}

/// Ollama's default template (`{{ .Prompt }}`) as Jinja: the user turns' text as sent.
pub const BARE_PROMPT: &str = "{% for message in messages %}{% if message['role'] == 'user' %}\
{{ message['content'] }}{% endif %}{% endfor %}";

/// Gemma 2 and 3 (`google/gemma-3-*-it`): no system role; a system prompt opens the first
/// user turn, and any later system (or tool) message is a user turn (Gemma knows only
/// `user` and `model`; Ollama's gemma3 template does the same).
const GEMMA: &str = "{{ bos_token }}\
{%- if messages[0]['role'] == 'system' -%}\
{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\
{%- set loop_messages = messages[1:] -%}\
{%- else -%}\
{%- set first_user_prefix = '' -%}\
{%- set loop_messages = messages -%}\
{%- endif -%}\
{%- for message in loop_messages -%}\
{%- set role = 'model' if message['role'] == 'assistant' else 'user' -%}\
{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}\
{{- message['content'] | trim }}{{ '<end_of_turn>\n' }}\
{%- endfor -%}\
{%- if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif -%}";

/// Llama 3, 3.1, 3.2, 3.3.
const LLAMA3: &str = "{{ bos_token }}\
{%- for message in messages -%}\
{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}\
{%- endfor -%}\
{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif -%}";

/// OpenAI's harmony format (gpt-oss): the system prompt as the developer message.
const HARMONY: &str = "{%- for message in messages -%}\
{%- if message['role'] == 'system' -%}\
{{ '<|start|>developer<|message|># Instructions\n\n' + message['content'] + '<|end|>' }}\
{%- elif message['role'] == 'assistant' -%}\
{{ '<|start|>assistant<|channel|>final<|message|>' + message['content'] + '<|end|>' }}\
{%- else -%}\
{{ '<|start|>' + message['role'] + '<|message|>' + message['content'] + '<|end|>' }}\
{%- endif -%}\
{%- endfor -%}\
{%- if add_generation_prompt %}{{ '<|start|>assistant' }}{% endif -%}";

/// Phi-4.
const PHI4: &str = "{%- for message in messages -%}\
{{ '<|im_start|>' + message['role'] + '<|im_sep|>' + message['content'] + '<|im_end|>' }}\
{%- endfor -%}\
{%- if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif -%}";

/// ChatML (Qwen 2, 2.5, 3, SmolLM, Hermes, ...).
const CHATML: &str = crate::template::CHATML_TEMPLATE;

/// Phi-3 and Phi-3.5.
const PHI3: &str = "{%- for message in messages -%}\
{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}\
{%- endfor -%}\
{%- if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif -%}";

/// DeepSeek V3 and R1 (and the R1 distills).
const DEEPSEEK: &str = "{{ bos_token }}\
{%- for message in messages -%}\
{%- if message['role'] == 'system' -%}{{ message['content'] }}\
{%- elif message['role'] == 'user' -%}{{ '<｜User｜>' + message['content'] }}\
{%- elif message['role'] == 'assistant' -%}{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}\
{%- endif -%}\
{%- endfor -%}\
{%- if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif -%}";

/// IBM Granite 3 and 4.
const GRANITE: &str = "{%- for message in messages -%}\
{{ '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + message['content'] + '<|end_of_text|>\n' }}\
{%- endfor -%}\
{%- if add_generation_prompt %}{{ '<|start_of_role|>assistant<|end_of_role|>' }}{% endif -%}";

/// Cohere Command R and R+.
const COMMAND_R: &str = "{{ bos_token }}\
{%- for message in messages -%}\
{%- set role = {'system': 'SYSTEM', 'user': 'USER', 'assistant': 'CHATBOT'}.get(message['role'], 'USER') -%}\
{{ '<|START_OF_TURN_TOKEN|><|' + role + '_TOKEN|>' + message['content'] + '<|END_OF_TURN_TOKEN|>' }}\
{%- endfor -%}\
{%- if add_generation_prompt %}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}{% endif -%}";

/// Mistral (v3 and Tekken tokenizers, where `[INST]` is a control token): the system
/// prompt opens the last user turn.
const MISTRAL: &str = "{%- if messages and messages[0]['role'] == 'system' -%}\
{%- set system = messages[0]['content'] -%}{%- set loop_messages = messages[1:] -%}\
{%- else -%}{%- set system = '' -%}{%- set loop_messages = messages -%}{%- endif -%}\
{{ bos_token }}\
{%- for message in loop_messages -%}\
{%- if message['role'] == 'user' -%}\
{{ '[INST]' + ((system + '\n\n') if system and loop.revindex <= 2 else '') + message['content'] + '[/INST]' }}\
{%- elif message['role'] == 'assistant' -%}{{ message['content'] + eos_token }}\
{%- endif -%}\
{%- endfor -%}";

/// The table, in the order families are tried: more specific markers first (Phi-4's
/// `<|im_sep|>` before ChatML's `<|im_start|>`).
pub const KNOWN_TEMPLATES: &[KnownTemplate] = &[
    KnownTemplate {
        name: "gemma",
        markers: &["<start_of_turn>", "<end_of_turn>"],
        architectures: &["gemma"],
        source: GEMMA,
    },
    KnownTemplate {
        name: "llama3",
        markers: &["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        architectures: &[],
        source: LLAMA3,
    },
    KnownTemplate {
        name: "harmony",
        markers: &["<|start|>", "<|channel|>", "<|message|>", "<|end|>"],
        architectures: &["gpt-oss"],
        source: HARMONY,
    },
    KnownTemplate {
        name: "phi4",
        markers: &["<|im_start|>", "<|im_sep|>", "<|im_end|>"],
        architectures: &[],
        source: PHI4,
    },
    KnownTemplate {
        name: "chatml",
        markers: &["<|im_start|>", "<|im_end|>"],
        architectures: &["qwen"],
        source: CHATML,
    },
    KnownTemplate {
        name: "phi3",
        markers: &["<|user|>", "<|assistant|>", "<|end|>"],
        architectures: &["phi3"],
        source: PHI3,
    },
    KnownTemplate {
        name: "deepseek",
        markers: &["<｜User｜>", "<｜Assistant｜>"],
        architectures: &["deepseek"],
        source: DEEPSEEK,
    },
    KnownTemplate {
        name: "granite",
        markers: &["<|start_of_role|>", "<|end_of_role|>"],
        architectures: &["granite"],
        source: GRANITE,
    },
    KnownTemplate {
        name: "command-r",
        markers: &["<|START_OF_TURN_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|END_OF_TURN_TOKEN|>"],
        architectures: &["command-r", "cohere"],
        source: COMMAND_R,
    },
    KnownTemplate {
        name: "mistral",
        markers: &["[INST]", "[/INST]"],
        architectures: &[],
        source: MISTRAL,
    },
];

/// The template chosen for a file without one, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateChoice {
    /// The family's name, or `bare` for Ollama's bare prompt.
    pub name: &'static str,
    /// The Jinja source.
    pub source: &'static str,
    /// Why, in words: "gemma, from the `<start_of_turn>` token; the file carries no
    /// template".
    pub reason: String,
}

/// Chooses a template for a model file that carries none: by the vocabulary
/// (`has_token(text)`: whether `text` is one token of it) first, then by `architecture`,
/// else Ollama's bare prompt.
pub fn choose(architecture: &str, has_token: &dyn Fn(&str) -> bool) -> TemplateChoice {
    const NONE: &str = "the file carries no template";
    if let Some(t) = KNOWN_TEMPLATES.iter().find(|t| t.markers.iter().all(|m| has_token(m))) {
        let tokens: Vec<String> = t.markers.iter().map(|m| format!("`{m}`")).collect();
        let noun = if tokens.len() == 1 { "token" } else { "tokens" };
        return TemplateChoice {
            name: t.name,
            source: t.source,
            reason: format!("{}, from the {} {noun}; {NONE}", t.name, tokens.join(", ")),
        };
    }
    let arch = architecture.to_ascii_lowercase();
    if !arch.is_empty()
        && let Some(t) =
            KNOWN_TEMPLATES.iter().find(|t| t.architectures.iter().any(|a| arch.starts_with(a)))
    {
        return TemplateChoice {
            name: t.name,
            source: t.source,
            reason: format!("{}, from the {architecture} architecture; {NONE}", t.name),
        };
    }
    TemplateChoice {
        name: "bare",
        source: BARE_PROMPT,
        reason: format!(
            "the user's text as sent (Ollama's default); {NONE} and neither its vocabulary \
             nor its architecture ({}) names a known chat format",
            if architecture.is_empty() { "unknown" } else { architecture }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::{ChatInput, ChatMessage, ChatTemplate};

    fn render(source: &str, messages: &[ChatMessage]) -> String {
        let t = ChatTemplate::new(source).unwrap();
        t.render(&ChatInput {
            messages,
            add_generation_prompt: true,
            bos_token: "<bos>",
            eos_token: "<eos>",
            ..Default::default()
        })
        .unwrap()
    }

    fn chat() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "Hello."),
            ChatMessage::new("user", "Capital of France?"),
        ]
    }

    #[test]
    fn every_known_template_compiles_and_renders_every_turn() {
        for t in KNOWN_TEMPLATES {
            let text = render(t.source, &chat());
            for part in ["Hi", "Hello.", "Capital of France?", "Be brief."] {
                assert!(text.contains(part), "{}: {part} missing from {text:?}", t.name);
            }
            let only_user = render(t.source, &[ChatMessage::new("user", "x")]);
            assert!(only_user.contains('x'), "{}", t.name);
        }
        assert_eq!(render(BARE_PROMPT, &chat()), "HiCapital of France?");
    }

    #[test]
    fn gemma_renders_as_its_own_template() {
        assert_eq!(
            render(GEMMA, &chat()),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n\
             Hello.<end_of_turn>\n<start_of_turn>user\nCapital of France?<end_of_turn>\n\
             <start_of_turn>model\n"
        );
        // A second system message is a user turn: Gemma has no system role.
        let two = [
            ChatMessage::new("system", "Rule one."),
            ChatMessage::new("system", "Rule two."),
            ChatMessage::new("user", "Hi"),
        ];
        assert_eq!(
            render(GEMMA, &two),
            "<bos><start_of_turn>user\nRule one.\n\nRule two.<end_of_turn>\n<start_of_turn>user\n\
             Hi<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn chosen_by_tokens_then_architecture_then_bare() {
        let vocab = |tokens: &'static [&'static str]| move |t: &str| tokens.contains(&t);
        let gemma = choose("gemma3", &vocab(&["<start_of_turn>", "<end_of_turn>"]));
        assert_eq!(gemma.name, "gemma");
        assert_eq!(
            gemma.reason,
            "gemma, from the `<start_of_turn>`, `<end_of_turn>` tokens; the file carries no \
             template"
        );
        let phi4 = choose("phi3", &vocab(&["<|im_start|>", "<|im_sep|>", "<|im_end|>"]));
        assert_eq!(phi4.name, "phi4");
        assert_eq!(choose("llama", &vocab(&["<|im_start|>", "<|im_end|>"])).name, "chatml");
        let by_arch = choose("qwen3", &vocab(&[]));
        assert_eq!(by_arch.name, "chatml");
        assert!(by_arch.reason.contains("qwen3 architecture"), "{}", by_arch.reason);
        let bare = choose("llama", &vocab(&[]));
        assert_eq!(bare.name, "bare");
        assert!(bare.reason.contains("Ollama's default"), "{}", bare.reason);
    }
}
