//! Thinking (reasoning) text of models that write it between `<think>` and `</think>`
//! (DeepSeek-R1, Qwen3, ...), split from the answer as Ollama's `thinking` field does.
//!
//! A model thinks if its chat template mentions `<think>` ([`template_thinks`]). Its output
//! may open with `<think>` or, when the template already opened the block in the prompt,
//! start inside it; everything up to `</think>` is thinking, the rest is content.
//! [`ThinkingParser`] does this on streamed text, holding back only what could be the
//! start of a tag.

/// A request's thinking setting: Ollama's `think` (a boolean or an effort level, as
/// gpt-oss takes it) or OpenAI's `reasoning_effort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Think {
    /// Thinking off (`false`, OpenAI's `"none"`).
    Off,
    /// Thinking on (`true`).
    On,
    /// Thinking on at an effort level; templates read it as `reasoning_effort`.
    Level(Effort),
}

impl From<bool> for Think {
    fn from(on: bool) -> Think {
        if on { Think::On } else { Think::Off }
    }
}

impl Think {
    /// Whether the request asks for thinking (any level counts).
    pub fn enabled(self) -> bool {
        !matches!(self, Think::Off)
    }

    /// The effort level, if one was given.
    pub fn effort(self) -> Option<Effort> {
        match self {
            Think::Level(e) => Some(e),
            _ => None,
        }
    }

    /// As Ollama's API carries `think`: `true`, `false` or the level's name.
    pub fn to_ollama_json(self) -> serde_json::Value {
        match self {
            Think::On => serde_json::Value::Bool(true),
            Think::Off => serde_json::Value::Bool(false),
            Think::Level(e) => serde_json::Value::from(e.as_str()),
        }
    }
}

/// A reasoning effort level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effort {
    /// `"minimal"` (OpenAI's `reasoning_effort` only).
    Minimal,
    /// `"low"`.
    Low,
    /// `"medium"`.
    Medium,
    /// `"high"`.
    High,
}

impl Effort {
    /// The level of Ollama's `think` (`"low"`, `"medium"`, `"high"`); `None` otherwise.
    pub fn of_ollama(s: &str) -> Option<Effort> {
        match s {
            "low" => Some(Effort::Low),
            "medium" => Some(Effort::Medium),
            "high" => Some(Effort::High),
            _ => None,
        }
    }

    /// The level of OpenAI's `reasoning_effort` (Ollama's and `"minimal"`).
    pub fn of_openai(s: &str) -> Option<Effort> {
        if s == "minimal" { Some(Effort::Minimal) } else { Effort::of_ollama(s) }
    }

    /// The name, as templates receive it in `reasoning_effort`.
    pub fn as_str(self) -> &'static str {
        match self {
            Effort::Minimal => "minimal",
            Effort::Low => "low",
            Effort::Medium => "medium",
            Effort::High => "high",
        }
    }
}

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// Whether a rendered prompt ends inside an opened `<think>` block (the template opened
/// it for the model).
pub fn opens_think(rendered: &str) -> bool {
    rendered.trim_end().ends_with(OPEN)
}

/// Whether a chat template is one of a thinking model (it writes or expects `<think>`).
pub fn template_thinks(template_source: &str) -> bool {
    template_source.contains(OPEN)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace yet: the output may open a block.
    Start,
    /// Inside the block.
    Thinking,
    /// After the block (or there was none): content.
    Content,
}

/// Splits streamed output into thinking and content.
#[derive(Debug, Clone)]
pub struct ThinkingParser {
    state: State,
    held: String,
    /// Inside the block, some non-whitespace thinking has been seen.
    started: bool,
}

/// What one piece of output turned into.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Split {
    /// Thinking text.
    pub thinking: String,
    /// Answer text.
    pub content: String,
}

impl ThinkingParser {
    /// `in_block`: the prompt already opened `<think>` (the output starts inside it).
    pub fn new(in_block: bool) -> Self {
        ThinkingParser {
            state: if in_block { State::Thinking } else { State::Start },
            held: String::new(),
            started: false,
        }
    }

    /// Feeds the next piece of output.
    pub fn push(&mut self, text: &str) -> Split {
        self.held.push_str(text);
        let mut out = Split::default();
        loop {
            match self.state {
                State::Content => {
                    out.content.push_str(&std::mem::take(&mut self.held));
                    return out;
                }
                State::Start => {
                    let trimmed = self.held.trim_start();
                    if trimmed.is_empty() {
                        return out;
                    }
                    if let Some(rest) = trimmed.strip_prefix(OPEN) {
                        self.held = rest.to_string();
                        self.state = State::Thinking;
                        self.started = false;
                    } else if OPEN.starts_with(trimmed) {
                        return out;
                    } else {
                        self.state = State::Content;
                    }
                }
                State::Thinking => {
                    if !self.started {
                        // Whitespace right after `<think>` is layout, not thought.
                        let trimmed = self.held.trim_start();
                        if trimmed.is_empty() {
                            self.held.clear();
                            return out;
                        }
                        self.held = trimmed.to_string();
                        self.started = true;
                    }
                    if let Some(at) = self.held.find(CLOSE) {
                        out.thinking.push_str(self.held[..at].trim_end());
                        let rest = self.held[at + CLOSE.len()..].trim_start().to_string();
                        self.held = rest;
                        self.state = State::Content;
                        continue;
                    }
                    // Keep back only a tail that could begin `</think>`.
                    let keep = (1..CLOSE.len())
                        .rev()
                        .find(|&n| self.held.ends_with(&CLOSE[..n]))
                        .unwrap_or(0);
                    let cut = self.held.len() - keep;
                    out.thinking.push_str(&self.held[..cut]);
                    self.held.drain(..cut);
                    return out;
                }
            }
        }
    }

    /// Ends the output: whatever was held back, where it belongs.
    pub fn finish(self) -> Split {
        let held = self.held;
        match self.state {
            State::Thinking => Split { thinking: held, content: String::new() },
            _ => Split { thinking: String::new(), content: held },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn think_levels() {
        assert!(!Think::Off.enabled());
        assert!(Think::On.enabled());
        let high = Think::Level(Effort::High);
        assert!(high.enabled());
        assert_eq!(high.effort().map(Effort::as_str), Some("high"));
        assert_eq!(Think::On.effort(), None);
        for l in ["low", "medium", "high"] {
            assert_eq!(Effort::of_ollama(l).map(Effort::as_str), Some(l));
        }
        assert_eq!(Effort::of_ollama("minimal"), None);
        assert_eq!(Effort::of_openai("minimal"), Some(Effort::Minimal));
        assert_eq!(Effort::of_ollama("HIGH"), None);
    }

    fn run(in_block: bool, pieces: &[&str]) -> Split {
        let mut p = ThinkingParser::new(in_block);
        let mut all = Split::default();
        for piece in pieces {
            let s = p.push(piece);
            all.thinking.push_str(&s.thinking);
            all.content.push_str(&s.content);
        }
        let s = p.finish();
        all.thinking.push_str(&s.thinking);
        all.content.push_str(&s.content);
        all
    }

    #[test]
    fn splits_a_block_with_tags_across_pieces() {
        let s = run(false, &["\n<th", "ink>Let me see", ". 2+2=4</thi", "nk>\n\nIt is 4."]);
        assert_eq!(s.thinking, "Let me see. 2+2=4");
        assert_eq!(s.content, "It is 4.");
    }

    #[test]
    fn output_that_starts_inside_the_block() {
        let s = run(true, &["hmm", "</think>", "Answer"]);
        assert_eq!(s, Split { thinking: "hmm".into(), content: "Answer".into() });
    }

    #[test]
    fn no_block_is_all_content_and_streams_at_once() {
        let mut p = ThinkingParser::new(false);
        assert_eq!(p.push("Hi").content, "Hi");
        assert_eq!(p.push(" <think>not a block").content, " <think>not a block");
        assert_eq!(run(false, &["<thin", "g>"]).content, "<thing>");
    }

    #[test]
    fn layout_whitespace_is_not_thinking() {
        let s = run(false, &["<think>\n\n", "</think>\n\nHello"]);
        assert_eq!(s, Split { thinking: String::new(), content: "Hello".into() });
        let s = run(true, &["\n", " a b \n</think>x"]);
        assert_eq!(s.thinking, "a b");
    }

    #[test]
    fn unfinished_thinking_stays_thinking_and_templates_are_recognised() {
        assert_eq!(run(false, &["<think>still going"]).thinking, "still going");
        assert!(template_thinks("{% if enable_thinking %}<think>\\n{% endif %}"));
        assert!(!template_thinks("{{ messages }}"));
    }
}
