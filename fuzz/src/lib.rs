//! corral-fuzz: coverage-guided fuzz targets for the parsers that read what a client, a
//! registry or a model file sends.
//!
//! Each target is a plain function over bytes ([`TARGETS`]); the library code it drives
//! is expected to return errors, never panic. A target panics (and so crashes the fuzzer)
//! when the library panics, when an invariant the library promises does not hold (a
//! parsed name that maps outside the store, a manifest that does not survive its own
//! JSON, a structured-output matcher that calls invalid JSON complete), and the fuzzer
//! counts an abort, a stack overflow, an allocation past its memory limit or more than a
//! second on one input as a crash or a hang too.
//!
//! - `src/bin/<target>.rs`: the AFL entry points (`--features afl`, built by
//!   `cargo afl build`; see `fuzz/README.md` and `fuzz/run.sh`). They run the target on
//!   a thread with [`STACK_SIZE`] of stack, the stack the server's worker threads have,
//!   so deep recursion is found where it would crash the server.
//! - `tests/replay.rs`: every seed (`fuzz/seeds/<target>/`) and every past crash
//!   (`fuzz/regressions/<target>/`) through its target, as a plain `cargo test`.

use std::borrow::Cow;
use std::time::{Duration, Instant};

mod gguf;
mod json_schema;
mod manifest;
mod modelfile;
mod names;
mod templates;

pub use gguf::gguf_reader;
pub use json_schema::json_schema;
pub use manifest::oci_manifest;
pub use modelfile::modelfile;
pub use names::names_digests;
pub use templates::{chat_template, gotemplate};

/// Stack of the thread a target runs on: 2 MiB, what tokio's worker threads and
/// `spawn_blocking` threads get, where the server parses and renders requests.
pub const STACK_SIZE: usize = 2 << 20;

/// One fuzz target.
#[derive(Clone, Copy)]
pub struct Target {
    /// The name: the binary in `src/bin/`, the folder in `seeds/` and `regressions/`.
    pub name: &'static str,
    /// What it fuzzes, for `run.sh` and the README.
    pub about: &'static str,
    /// The target itself.
    pub run: fn(&[u8]),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Every target, in the order `run.sh all` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "gguf_reader",
        about: "corral_gguf::reader::GgufFile::parse (default and tight limits) and summary",
        run: gguf_reader,
    },
    Target { name: "modelfile", about: "corral_registry::modelfile::parse", run: modelfile },
    Target {
        name: "gotemplate",
        about: "corral_generation::gotemplate::prepare, then the Jinja render of the result",
        run: gotemplate,
    },
    Target {
        name: "chat_template",
        about: "corral_generation::template::ChatTemplate on arbitrary Jinja source",
        run: chat_template,
    },
    Target {
        name: "json_schema",
        about: "corral_generation::structured: Grammar::from_format, Matcher, JsonConstraint",
        run: json_schema,
    },
    Target {
        name: "names_digests",
        about: "corral_registry ModelName and Digest parsing, and the store paths they give",
        run: names_digests,
    },
    Target {
        name: "oci_manifest",
        about: "corral_registry::Manifest (and config, layer) from JSON, and back",
        run: oci_manifest,
    },
];

/// The target named `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Runs `f` on a fresh thread with [`STACK_SIZE`] of stack and returns how long it took.
/// A panic in `f` is resumed on the caller's thread; a stack overflow aborts the process,
/// as it would the server.
pub fn on_server_stack(f: impl FnOnce() + Send) -> Duration {
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("fuzz-target".into())
            .stack_size(STACK_SIZE)
            .spawn_scoped(s, move || {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .unwrap_or_else(|e| panic!("cannot start a thread for the target: {e}"));
        match handle.join() {
            Ok(elapsed) => elapsed,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// The AFL entry point of a target: the persistent fuzz loop, on a thread with
/// [`STACK_SIZE`] of stack. A panic aborts the process, which AFL records as a crash.
#[cfg(feature = "afl")]
pub fn afl_main(run: fn(&[u8])) {
    let worker = std::thread::Builder::new()
        .name("fuzz-target".into())
        .stack_size(STACK_SIZE)
        .spawn(move || afl::fuzz!(|data: &[u8]| run(data)));
    match worker {
        Ok(handle) => {
            if handle.join().is_err() {
                std::process::abort();
            }
        }
        Err(e) => panic!("cannot start the fuzz thread: {e}"),
    }
}

/// The input as text, invalid UTF-8 replaced (every text parser gets a `&str`).
pub(crate) fn text(data: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(data)
}
