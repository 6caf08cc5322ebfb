//! Checking plugin libraries in worker processes: each is opened (and, when asked,
//! initialised) by a short-lived child (`corral plugin-inspect MANIFEST`), which prints
//! one JSON line and ends, so a library that crashes, aborts or hangs while it loads
//! takes only that child down. `corral backends` checks every plugin it does not load
//! this way; `corral plugin install` checks a plugin before it copies it.

use std::{
    ffi::OsString,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    loader::{Inspection, inspect},
    manifest::Manifest,
};

/// How to start an inspection worker: the executable and the arguments before the
/// manifest path (the host's `plugin-inspect` subcommand).
#[derive(Debug, Clone)]
pub struct Inspector {
    /// The executable.
    pub exe: PathBuf,
    /// Arguments before the manifest path.
    pub args: Vec<OsString>,
    /// How long one inspection may take before the worker is killed.
    pub timeout: Duration,
}

/// The one line an inspection worker prints.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Answer {
    /// The library opened (and initialised, when asked).
    Ok(Inspection),
    /// Why it did not.
    Err(String),
}

/// The worker side: inspects the plugin of the manifest at `manifest_path` (with init
/// when `init_options` is given) and prints the answer as one JSON line on stdout.
/// Returns whether the plugin passed.
pub fn run_inspect_worker(manifest_path: &Path, init_options: Option<String>) -> bool {
    let answer = match Manifest::load(manifest_path) {
        Err(e) => Answer::Err(e.to_string()),
        Ok(m) => match inspect(&m, manifest_path, init_options) {
            Ok(i) => Answer::Ok(i),
            Err(e) => Answer::Err(e.to_string()),
        },
    };
    let ok = matches!(answer, Answer::Ok(_));
    match serde_json::to_string(&answer) {
        Ok(line) => println!("{line}"),
        Err(e) => println!("{{\"err\":\"cannot encode the answer: {e}\"}}"),
    }
    ok
}

impl Inspector {
    /// Inspects one plugin in a worker process: its [`Inspection`], or one line saying
    /// why it cannot be loaded (what it printed, or how the worker died).
    pub fn inspect(
        &self,
        manifest_path: &Path,
        init_options: Option<&str>,
    ) -> Result<Inspection, String> {
        let mut cmd = Command::new(&self.exe);
        cmd.args(&self.args).arg(manifest_path);
        if let Some(o) = init_options {
            cmd.arg("--init").arg(o);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start a worker ({}): {e}", self.exe.display()))?;
        // Read both pipes on threads so a chatty library cannot block on a full pipe.
        let drain = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_string(&mut s);
                }
                s
            })
        };
        let out = drain(child.stdout.take().map(|o| Box::new(o) as Box<dyn Read + Send>));
        let err = drain(child.stderr.take().map(|e| Box::new(e) as Box<dyn Read + Send>));
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if start.elapsed() > self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(format!("cannot wait for the worker: {e}")),
            }
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        if let Some(line) = stdout.lines().rev().find(|l| l.starts_with('{'))
            && let Ok(answer) = serde_json::from_str::<Answer>(line)
        {
            return match answer {
                Answer::Ok(i) => Ok(i),
                Answer::Err(e) => Err(e),
            };
        }
        let tail = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| format!(" (last words: {})", l.trim()))
            .unwrap_or_default();
        Err(match status {
            None => format!(
                "opening the library did not finish within {:?}; the worker was killed",
                self.timeout
            ),
            Some(s) => format!("opening the library killed its worker process ({s}){tail}"),
        })
    }

    /// [`Inspector::inspect`] of several plugins at once, each in its own worker, in the
    /// order given.
    pub fn inspect_all(&self, manifests: &[PathBuf]) -> Vec<Result<Inspection, String>> {
        std::thread::scope(|s| {
            let handles: Vec<_> =
                manifests.iter().map(|m| s.spawn(move || self.inspect(m, None))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("the inspection thread panicked".into())))
                .collect()
        })
    }
}
