//! llama.cpp's and ggml's log output, routed into the `log` crate (and so to the host).
//!
//! llama.cpp writes a line in pieces (`GGML_LOG_LEVEL_CONT` continues the previous piece),
//! so pieces are gathered per thread until a newline. Levels are mapped one step down,
//! because llama.cpp's INFO is a developer's chatter (every tensor type, every metadata key
//! at load): ERROR → error, WARN → warn, INFO → debug, DEBUG → trace.
//!
//! Error lines are also remembered per thread, so that a failed load can say *why*
//! llama.cpp refused the file ([`take_errors`]).

use std::cell::RefCell;
use std::ffi::{CStr, c_char, c_void};

use llama_cpp_sys_2 as sys;

/// Log target of llama.cpp's records.
pub(crate) const TARGET: &str = "llama.cpp";

/// Longest line kept; llama.cpp's lines are short, this only bounds a runaway one.
const MAX_LINE: usize = 4096;
/// Error lines remembered per thread.
const MAX_ERRORS: usize = 16;

#[derive(Default)]
struct LineState {
    buf: String,
    level: Option<log::Level>,
    errors: Vec<String>,
    /// Inside [`quietly`]: every line is logged at trace level and no error is kept.
    quiet: bool,
}

thread_local! {
    static STATE: RefCell<LineState> = RefCell::new(LineState::default());
}

fn map_level(level: sys::ggml_log_level) -> Option<log::Level> {
    match level {
        sys::GGML_LOG_LEVEL_ERROR => Some(log::Level::Error),
        sys::GGML_LOG_LEVEL_WARN => Some(log::Level::Warn),
        sys::GGML_LOG_LEVEL_INFO => Some(log::Level::Debug),
        sys::GGML_LOG_LEVEL_DEBUG => Some(log::Level::Trace),
        // NONE and CONT keep the level of the line being continued.
        _ => None,
    }
}

fn emit(state: &mut LineState) {
    let line = state.buf.trim_end();
    if !line.is_empty() {
        let level =
            if state.quiet { log::Level::Trace } else { state.level.unwrap_or(log::Level::Debug) };
        if level == log::Level::Error {
            if state.errors.len() == MAX_ERRORS {
                state.errors.remove(0);
            }
            state.errors.push(line.to_string());
        }
        match crate::rpc::explain_server_line(line) {
            Some(explained) => log::error!(target: TARGET, "{explained}"),
            None => log::log!(target: TARGET, level, "{line}"),
        }
    }
    state.buf.clear();
    state.level = None;
}

fn on_piece(level: sys::ggml_log_level, text: &str) {
    STATE.with(|cell| {
        let Ok(mut state) = cell.try_borrow_mut() else { return };
        if let Some(l) = map_level(level) {
            // A new line starts; flush an unterminated previous one.
            if !state.buf.is_empty() {
                emit(&mut state);
            }
            state.level = Some(l);
        }
        let mut rest = text;
        while let Some(nl) = rest.find('\n') {
            push_bounded(&mut state.buf, &rest[..nl]);
            emit(&mut state);
            rest = &rest[nl + 1..];
        }
        push_bounded(&mut state.buf, rest);
    });
}

fn push_bounded(buf: &mut String, s: &str) {
    let room = MAX_LINE.saturating_sub(buf.len());
    if s.len() <= room {
        buf.push_str(s);
    } else {
        let mut cut = room;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        buf.push_str(&s[..cut]);
    }
}

unsafe extern "C" fn log_callback(
    level: sys::ggml_log_level,
    text: *const c_char,
    _user_data: *mut c_void,
) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for the duration of the call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    // A panic must not unwind into C; a logging failure is not worth more than a lost line.
    let _ = std::panic::catch_unwind(|| on_piece(level, &text));
}

/// Installs the callback for llama.cpp and ggml (both share it through `llama_log_set`).
pub(crate) fn install() {
    // SAFETY: the callback is a plain function valid for the life of the process and
    // ignores its user data.
    unsafe { sys::llama_log_set(Some(log_callback), std::ptr::null_mut()) };
}

/// Runs `f` with what llama.cpp logs on this thread demoted to trace level and kept out
/// of [`take_errors`]: for calls whose failure the caller handles itself (a probe).
pub(crate) fn quietly<T>(f: impl FnOnce() -> T) -> T {
    let set = |quiet: bool| {
        STATE.with(|cell| {
            if let Ok(mut s) = cell.try_borrow_mut() {
                if !s.buf.is_empty() {
                    emit(&mut s);
                }
                s.quiet = quiet;
            }
        });
    };
    set(true);
    let out = f();
    set(false);
    out
}

/// Forgets the error lines this thread collected so far.
pub(crate) fn clear_errors() {
    STATE.with(|cell| {
        if let Ok(mut s) = cell.try_borrow_mut() {
            s.errors.clear();
        }
    });
}

/// Takes the error lines llama.cpp logged on this thread since [`clear_errors`].
pub(crate) fn take_errors() -> Vec<String> {
    STATE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => {
            if !s.buf.is_empty() {
                emit(&mut s);
            }
            std::mem::take(&mut s.errors)
        }
        Err(_) => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_join_into_lines_and_errors_are_kept() {
        clear_errors();
        on_piece(sys::GGML_LOG_LEVEL_ERROR, "error loading ");
        on_piece(sys::GGML_LOG_LEVEL_CONT, "model: bad\n");
        on_piece(sys::GGML_LOG_LEVEL_INFO, "just info\n");
        assert_eq!(take_errors(), vec!["error loading model: bad".to_string()]);
        assert!(take_errors().is_empty());
    }

    #[test]
    fn long_lines_are_bounded() {
        let mut s = String::new();
        push_bounded(&mut s, &"é".repeat(MAX_LINE));
        assert!(s.len() <= MAX_LINE);
    }
}
