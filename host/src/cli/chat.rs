//! The interactive chat of `corral run`, the same in this process and through a server,
//! as `ollama run` has it (`cmd/interactive.go`): `/?` and `/help`, `/set parameter NAME
//! VALUE`, `/set system TEXT`, `/show info|license|modelfile|parameters|system|template`,
//! `/clear`, `/bye`; `"""` starts a message of several lines; any other line that
//! starts with `/` is an unknown command, never sent to the model.
//!
//! Ctrl-C (SIGINT) while an answer is written cancels that answer only; at the prompt it
//! says how to leave and the chat goes on. What the user types is read as bytes: a line
//! that is not UTF-8 is decoded lossily, never the end of the chat.

use std::{
    io::{BufRead as _, Write as _},
    sync::{
        Arc, Mutex, Once, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

/// What the user typed in the interactive chat, for the path that runs the model.
pub(crate) enum ChatLine<'a> {
    /// `/clear`: forget the conversation (keep the system prompt).
    Clear,
    /// A message.
    Text(&'a str),
    /// `/set parameter NAME VALUE`: the option's name and its value as JSON (checked by
    /// [`parameter`]).
    SetParameter(&'a str, Value),
    /// `/set system TEXT`.
    SetSystem(&'a str),
    /// `/show PART`, one of [`SHOW_PARTS`].
    Show(&'a str),
}

/// What `/show` shows.
pub(crate) const SHOW_PARTS: [&str; 6] =
    ["info", "license", "modelfile", "parameters", "system", "template"];

const HELP: &str = "Available Commands:
  /set            Set session variables
  /show           Show model information
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command

Use \"\"\" to begin a multi-line message.
";

const SET_HELP: &str = "Available Commands:
  /set parameter NAME VALUE   Set a parameter (temperature, top_k, top_p, min_p, seed,
                              num_predict, repeat_penalty, stop, ...)
  /set system TEXT            Set system message
";

const SHOW_HELP: &str = "Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
";

/// `/set parameter NAME VALUE...` as the JSON value of option `name`, checked as the
/// options of a request are (an unknown name or a value out of range is refused). `stop`
/// takes every word as a stop string, as in Ollama.
pub(crate) fn parameter(name: &str, words: &[&str]) -> Result<Value> {
    let value = if name == "stop" {
        json!(words)
    } else {
        let text = words.join(" ");
        serde_json::from_str::<Value>(&text)
            .ok()
            .filter(|v| v.is_number() || v.is_boolean())
            .unwrap_or(Value::String(text))
    };
    let mut o = corral_generation::options::SamplingOptions::default();
    o.apply_json(&json!({ name: value }))?;
    if o.extra.contains_key(name) {
        anyhow::bail!("unknown parameter {name:?}");
    }
    o.validate()?;
    Ok(value)
}

/// One answer being written, which Ctrl-C cancels.
pub(crate) struct Turn {
    /// Set by Ctrl-C (the engine loop's cancel flag, in this process).
    pub cancel: Arc<AtomicBool>,
    /// Notified by Ctrl-C (ends a request to a server).
    pub notify: tokio::sync::Notify,
}

impl Turn {
    /// Whether Ctrl-C cancelled this answer.
    pub(crate) fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

/// What Ctrl-C does now.
enum Phase {
    /// Between the prompt and an answer (a command, a template rendering): nothing to
    /// cancel, and the chat goes on.
    Busy,
    /// Waiting at the prompt: say how to leave.
    Prompt,
    /// Writing an answer: cancel it.
    Writing(Arc<Turn>),
}

static PHASE: Mutex<Phase> = Mutex::new(Phase::Busy);
/// Ctrl-C came at the prompt: the lines of an unfinished `"""` message are dropped.
static AT_PROMPT_INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn set_phase(p: Phase) {
    *PHASE.lock().unwrap_or_else(PoisonError::into_inner) = p;
}

/// Starts an answer that Ctrl-C cancels (in the interactive chat; elsewhere Ctrl-C ends
/// the program as usual). Dropping the guard ends it.
pub(crate) fn start_turn() -> TurnGuard {
    let turn = Arc::new(Turn {
        cancel: Arc::new(AtomicBool::new(false)),
        notify: tokio::sync::Notify::new(),
    });
    set_phase(Phase::Writing(turn.clone()));
    TurnGuard(turn)
}

/// An answer being written; see [`start_turn`].
pub(crate) struct TurnGuard(pub Arc<Turn>);

impl Drop for TurnGuard {
    fn drop(&mut self) {
        set_phase(Phase::Busy);
    }
}

fn on_interrupt() {
    let phase = PHASE.lock().unwrap_or_else(PoisonError::into_inner);
    match &*phase {
        Phase::Writing(t) => {
            t.cancel.store(true, Ordering::SeqCst);
            t.notify.notify_one();
        }
        Phase::Prompt => {
            AT_PROMPT_INTERRUPTED.store(true, Ordering::SeqCst);
            eprint!("\nUse Ctrl + d or /bye to exit.\n>>> ");
            let _ = std::io::stderr().flush();
        }
        Phase::Busy => {}
    }
}

/// Catches SIGINT for the rest of the process (once), in a thread of its own.
fn catch_ctrl_c() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = (|| -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let mut sig = rt.block_on(async {
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            })?;
            std::thread::Builder::new().name("ctrl-c".into()).spawn(move || {
                rt.block_on(async {
                    while sig.recv().await.is_some() {
                        on_interrupt();
                    }
                });
            })?;
            Ok(())
        })()
        .context("cannot catch Ctrl-C");
    });
    result
}

/// The text of a line the user typed: lossy UTF-8, without its line ending.
fn decode(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).trim_end_matches(['\n', '\r']).to_string()
}

/// The interactive chat: reads lines at a `>>> ` prompt until `/bye` (or `/exit`,
/// `/quit`) or the end of input, and hands each message or command to `on_line`; an
/// error is printed and the chat goes on.
pub(crate) fn chat_loop(mut on_line: impl FnMut(ChatLine<'_>) -> Result<()>) -> Result<()> {
    catch_ctrl_c()?;
    let stdin = std::io::stdin();
    // The lines of a `"""` message so far.
    let mut multi: Option<String> = None;
    loop {
        eprint!("{}", if multi.is_some() { "... " } else { ">>> " });
        let _ = std::io::stderr().flush();
        set_phase(Phase::Prompt);
        let mut raw = Vec::new();
        let read = stdin.lock().read_until(b'\n', &mut raw);
        set_phase(Phase::Busy);
        if read.context("cannot read the chat's input")? == 0 {
            // Ctrl-D: the next output starts on a line of its own.
            eprintln!();
            return Ok(());
        }
        if AT_PROMPT_INTERRUPTED.swap(false, Ordering::SeqCst) {
            multi = None;
        }
        let line = decode(&raw);
        let message = if let Some(buf) = multi.as_mut() {
            match line.strip_suffix("\"\"\"") {
                Some(last) => {
                    buf.push_str(last);
                    multi.take()
                }
                None => {
                    buf.push_str(&line);
                    buf.push('\n');
                    continue;
                }
            }
        } else if let Some(rest) = line.trim_start().strip_prefix("\"\"\"") {
            match rest.strip_suffix("\"\"\"") {
                Some(one) => Some(one.to_string()),
                None => {
                    multi = Some(format!("{rest}\n"));
                    continue;
                }
            }
        } else {
            None
        };
        let input = match &message {
            Some(text) if text.trim().is_empty() => continue,
            Some(text) => ChatLine::Text(text),
            None => match command(&line) {
                Command::Leave => return Ok(()),
                Command::Nothing => continue,
                Command::Input(i) => i,
            },
        };
        let note = match &input {
            ChatLine::Clear => Some("Cleared session context".to_string()),
            ChatLine::SetParameter(name, v) => {
                let shown = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                Some(format!("Set parameter '{name}' to '{shown}'"))
            }
            ChatLine::SetSystem(_) => Some("Set system message.".to_string()),
            ChatLine::Text(_) | ChatLine::Show(_) => None,
        };
        match on_line(input) {
            Err(e) => eprintln!("error: {}", super::error_line(&e)),
            Ok(()) => {
                if let Some(n) = note {
                    eprintln!("{n}");
                }
            }
        }
    }
}

/// What a line that is not a `"""` message asks.
enum Command<'a> {
    Leave,
    /// Handled here (help, a usage note, an unknown command) or empty.
    Nothing,
    Input(ChatLine<'a>),
}

fn command(line: &str) -> Command<'_> {
    let t = line.trim();
    if t.is_empty() {
        return Command::Nothing;
    }
    if !t.starts_with('/') {
        return Command::Input(ChatLine::Text(line));
    }
    let words: Vec<&str> = t.split_whitespace().collect();
    match words[0] {
        "/bye" | "/exit" | "/quit" => Command::Leave,
        "/?" | "/help" => {
            let text = match words.get(1).copied() {
                Some("set" | "/set") => SET_HELP,
                Some("show" | "/show") => SHOW_HELP,
                _ => HELP,
            };
            eprint!("{text}");
            Command::Nothing
        }
        "/clear" => Command::Input(ChatLine::Clear),
        "/set" => match words.get(1).copied() {
            Some("parameter") if words.len() >= 4 => match parameter(words[2], &words[3..]) {
                Ok(v) => Command::Input(ChatLine::SetParameter(words[2], v)),
                Err(e) => {
                    eprintln!("Couldn't set parameter: {}", super::error_line(&e));
                    Command::Nothing
                }
            },
            Some("parameter") => {
                eprintln!("Usage: /set parameter NAME VALUE (e.g. /set parameter temperature 0.5)");
                Command::Nothing
            }
            Some("system") if words.len() >= 3 => {
                // The text as typed after `system`, its spaces kept.
                let at = t.find("system").map_or(t.len(), |i| i + "system".len());
                Command::Input(ChatLine::SetSystem(t[at..].trim()))
            }
            _ => {
                eprint!("{SET_HELP}");
                Command::Nothing
            }
        },
        "/show" => match words.get(1).copied().filter(|w| SHOW_PARTS.contains(w)) {
            Some(part) if words.len() == 2 => Command::Input(ChatLine::Show(part)),
            _ => {
                eprint!("{SHOW_HELP}");
                Command::Nothing
            }
        },
        other => {
            eprintln!("Unknown command '{other}'. Type /? for help");
            Command::Nothing
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked_as_options() {
        assert_eq!(parameter("temperature", &["0.5"]).unwrap(), json!(0.5));
        assert_eq!(parameter("stop", &["a", "b"]).unwrap(), json!(["a", "b"]));
        assert!(parameter("temperature", &["-1"]).is_err());
        assert!(parameter("temperature", &["hot"]).is_err());
        assert!(parameter("no_such", &["1"]).is_err());
    }

    #[test]
    fn commands() {
        assert!(matches!(command("/bye"), Command::Leave));
        assert!(matches!(command("/nosuch x"), Command::Nothing));
        assert!(matches!(command("/show info"), Command::Input(ChatLine::Show("info"))));
        assert!(matches!(command("/show nothing"), Command::Nothing));
        assert!(matches!(
            command("/set system  be  brief "),
            Command::Input(ChatLine::SetSystem("be  brief"))
        ));
        assert!(matches!(command("hello /x"), Command::Input(ChatLine::Text("hello /x"))));
        assert_eq!(decode(b"caf\xe9\r\n"), "caf\u{fffd}");
    }
}
