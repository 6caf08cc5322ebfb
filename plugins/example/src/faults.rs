//! Test triggers that make the engine fail the ways real engines do, so the host's
//! isolation can be tested end to end. They are lines of the toy model file, so one
//! model can misbehave while another, loaded beside it, does not:
//!
//! - `on_load=FAULT`: while the model loads;
//! - `on_token=N:FAULT`: when a decode batch holds token `N` (a byte: `X` is 88);
//! - `on_decode=N:FAULT`: on a context's `N`th decode call (the prompt is the first).
//!
//! - `token_cost=US`: every decode takes `US` microseconds per batch entry (a slow,
//!   compute-bound engine, for tests of how the host schedules work).
//! - `vocab=N`: the model reports a vocabulary of `N` tokens (for tests of the host's
//!   bounds; its logits stay 259 wide).
//!
//! `FAULT` is `abort` (SIGABRT, as llama.cpp's `GGML_ASSERT`), `segv` (a write through a
//! null pointer), `exit` (the process exits with status 3), `hang` (never answers),
//! `oom` (an `OutOfMemory` error, no crash), `nan` (the step succeeds with every logit
//! NaN, as broken weights or an f16 overflow give) or `delay:MS` (a slow but successful
//! step).

use std::time::Duration;

use corral_backend_api::{BackendError, ErrorKind};

/// What a trigger does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `std::process::abort()`.
    Abort,
    /// A write through a null pointer.
    Segv,
    /// `std::process::exit(3)`.
    Exit,
    /// Sleeps forever.
    Hang,
    /// Returns `ErrorKind::OutOfMemory`.
    Oom,
    /// Succeeds, with every logit of the step NaN.
    Nan,
    /// Sleeps this long, then goes on.
    Delay(Duration),
}

impl Fault {
    fn parse(s: &str) -> Option<Fault> {
        Some(match s.trim() {
            "abort" => Fault::Abort,
            "segv" => Fault::Segv,
            "exit" => Fault::Exit,
            "hang" => Fault::Hang,
            "oom" => Fault::Oom,
            "nan" => Fault::Nan,
            other => {
                Fault::Delay(Duration::from_millis(other.strip_prefix("delay:")?.parse().ok()?))
            }
        })
    }

    /// Makes the fault happen; `Err` for the faults that are errors, `Ok` after a delay.
    pub fn fire(self, what: &str) -> Result<(), BackendError> {
        if !matches!(self, Fault::Delay(_) | Fault::Nan) {
            // The last words a crash leaves on stderr, as a real engine's assertion would.
            eprintln!("example plugin: {what}: {self:?} (test trigger)");
        }
        match self {
            Fault::Abort => std::process::abort(),
            Fault::Segv => {
                // SAFETY: none; this is the point. The test trigger writes through a null
                // pointer to make the process die of SIGSEGV, as a buggy engine would.
                unsafe { std::ptr::null_mut::<u32>().write_volatile(0xdead) };
                std::process::abort()
            }
            Fault::Exit => std::process::exit(3),
            Fault::Hang => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            Fault::Oom => Err(BackendError::new(
                ErrorKind::OutOfMemory,
                format!("{what}: out of memory (test trigger)"),
            )),
            Fault::Delay(d) => {
                std::thread::sleep(d);
                Ok(())
            }
            // The caller poisons the step's logits.
            Fault::Nan => Ok(()),
        }
    }
}

/// The triggers of one model.
#[derive(Debug, Clone, Default)]
pub struct Triggers {
    /// While loading.
    pub on_load: Option<Fault>,
    /// When a batch holds this token.
    pub on_token: Option<(u32, Fault)>,
    /// On this decode call of a context (1-based).
    pub on_decode: Option<(u64, Fault)>,
    /// Time each batch entry costs a decode.
    pub token_cost: Option<Duration>,
    /// The vocabulary size the model reports instead of its own (`vocab=N`).
    pub vocab: Option<u32>,
}

impl Triggers {
    /// The triggers in a model file's text (at most its first 64 KiB are read).
    pub fn of_file(path: &str) -> Triggers {
        use std::io::Read as _;
        let mut text = String::new();
        if let Ok(f) = std::fs::File::open(path) {
            let _ = f.take(64 << 10).read_to_string(&mut text);
        }
        let mut t = Triggers::default();
        for line in text.lines() {
            let Some((key, value)) = line.trim().split_once('=') else { continue };
            let numbered = || {
                let (n, f) = value.split_once(':')?;
                Some((n.trim().parse().ok()?, Fault::parse(f)?))
            };
            match key.trim() {
                "on_load" => t.on_load = Fault::parse(value),
                "on_token" => t.on_token = numbered().map(|(n, f): (u64, Fault)| (n as u32, f)),
                "on_decode" => t.on_decode = numbered(),
                "token_cost" => {
                    t.token_cost = value.trim().parse().ok().map(Duration::from_micros);
                }
                "vocab" => t.vocab = value.trim().parse().ok(),
                _ => {}
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_triggers() {
        let dir =
            std::env::temp_dir().join(format!("corral-example-faults-{}", std::process::id()));
        std::fs::write(
            &dir,
            "toy\non_load=delay:250\non_token=88:abort\non_decode=6:segv\ntoken_cost=1500\n",
        )
        .unwrap();
        let t = Triggers::of_file(dir.to_str().unwrap());
        let _ = std::fs::remove_file(&dir);
        assert_eq!(t.on_load, Some(Fault::Delay(Duration::from_millis(250))));
        assert_eq!(t.on_token, Some((88, Fault::Abort)));
        assert_eq!(t.on_decode, Some((6, Fault::Segv)));
        assert_eq!(t.token_cost, Some(Duration::from_micros(1500)));
        assert!(Fault::Oom.fire("test").is_err());
    }
}
