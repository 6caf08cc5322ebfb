//! What `corral run` writes of an answer, the same in this process and through a server:
//! the text as it streams, and a thinking model's thinking the way `ollama run` shows it
//! (`cmd/cmd.go`): `Thinking...`, the thinking, `...done thinking.` and a blank line
//! before the answer; grey (the markers bold) when stdout is a terminal, plain otherwise;
//! nothing of it with `--hidethinking`. Write errors (a closed pipe) are ignored here:
//! the answer goes on, and the process ends quietly when its output is gone.

use std::io::{IsTerminal as _, Write as _};

const GREY: &str = "\x1b[38;5;245m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// One answer being written to stdout.
pub(crate) struct Answer {
    hide_thinking: bool,
    color: bool,
    /// The thinking block is open (its opening line written, not yet its closing one).
    thinking_open: bool,
    /// The last thinking text written ended a line.
    thinking_ended_line: bool,
    /// The answer's text, without its thinking (what the conversation keeps).
    pub content: String,
}

impl Answer {
    /// An answer; `hide_thinking` leaves thinking out (`--hidethinking`).
    pub(crate) fn new(hide_thinking: bool) -> Answer {
        Answer {
            hide_thinking,
            color: std::io::stdout().is_terminal(),
            thinking_open: false,
            thinking_ended_line: true,
            content: String::new(),
        }
    }

    fn write(s: &str) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(s.as_bytes());
        let _ = out.flush();
    }

    /// A piece of thinking.
    pub(crate) fn thinking(&mut self, text: &str) {
        if self.hide_thinking || text.is_empty() {
            return;
        }
        if !self.thinking_open {
            // Once per answer: Ollama opens the block at the first thinking it gets.
            let open = if self.color {
                format!("{GREY}{BOLD}Thinking...\n{RESET}{GREY}")
            } else {
                "Thinking...\n".to_string()
            };
            Answer::write(&open);
            self.thinking_open = true;
        }
        Answer::write(text);
        self.thinking_ended_line = text.ends_with('\n');
    }

    /// A piece of the answer.
    pub(crate) fn content(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.close_thinking(true);
        Answer::write(text);
        self.content.push_str(text);
    }

    /// Ends the thinking block: with Ollama's closing line when the answer follows
    /// (`done`), else (the answer ended inside it) only the end of its line and colour.
    fn close_thinking(&mut self, done: bool) {
        if !self.thinking_open {
            return;
        }
        self.thinking_open = false;
        let mut s = String::new();
        if !self.thinking_ended_line {
            s.push('\n');
        }
        if done {
            if self.color {
                s.push_str(&format!("{GREY}{BOLD}...done thinking.\n\n{RESET}"));
            } else {
                s.push_str("...done thinking.\n\n");
            }
        } else if self.color {
            s.push_str(RESET);
        }
        Answer::write(&s);
        // The caller ends the answer's line; a thinking line already ended needs none.
        self.thinking_ended_line = true;
    }

    /// The answer is over (complete or cancelled): a thinking block still open is ended
    /// (its colour reset). Whether the caller still has a line to end.
    pub(crate) fn finish(&mut self) -> bool {
        let open = self.thinking_open;
        self.close_thinking(false);
        !(open && self.content.is_empty())
    }
}
