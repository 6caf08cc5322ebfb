//! Replays every seed (`fuzz/seeds/<target>/`) and every past crash
//! (`fuzz/regressions/<target>/`) through its target, each on a thread with the server's
//! stack size, and fails on a panic or on an input slower than the limit. This is what CI
//! runs without AFL; it needs no instrumentation.
//!
//! - `CORRAL_FUZZ_REPLAY=DIR`: also replay `DIR/<target>/**` (e.g. `fuzz/out/<target>`
//!   after a run, to replay everything AFL found).
//! - `CORRAL_FUZZ_OPEN=1`: also replay `regressions/<target>/open/`, crashes reported but
//!   not fixed yet (they may abort the test process).
//! - `CORRAL_FUZZ_REPLAY_LIMIT_MS`: the time limit per input (default 10000: this is an
//!   unoptimised test build; AFL's limit on the optimised build is 1 s).

use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_fuzz::{TARGETS, Target, on_server_stack};

fn limit() -> Duration {
    let ms = std::env::var("CORRAL_FUZZ_REPLAY_LIMIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    Duration::from_millis(ms)
}

/// Every file under `dir`, recursively, sorted; `open/` folders only when asked for.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name == "open" && std::env::var_os("CORRAL_FUZZ_OPEN").is_none() {
                continue;
            }
            files(&path, out);
        } else if path.is_file() && !name.starts_with('.') && name != "README.txt" {
            out.push(path);
        }
    }
}

fn replay(name: &str) {
    let target: &Target = TARGETS.iter().find(|t| t.name == name).expect("a known target");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut inputs = Vec::new();
    files(&root.join("seeds").join(name), &mut inputs);
    let seeds = inputs.len();
    files(&root.join("regressions").join(name), &mut inputs);
    if let Some(extra) = std::env::var_os("CORRAL_FUZZ_REPLAY") {
        files(&PathBuf::from(extra).join(name), &mut inputs);
    }
    assert!(seeds > 0, "no seeds for {name}");
    let limit = limit();
    let mut slowest = (Duration::ZERO, PathBuf::new());
    for path in &inputs {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let run = target.run;
        let took = std::panic::catch_unwind(|| on_server_stack(|| run(&data)))
            .unwrap_or_else(|_| panic!("{name}: {} crashes the target", path.display()));
        assert!(took <= limit, "{name}: {} took {took:?} (limit {limit:?})", path.display());
        if took > slowest.0 {
            slowest = (took, path.clone());
        }
    }
    println!(
        "{name}: {} inputs ({seeds} seeds), slowest {:?} ({})",
        inputs.len(),
        slowest.0,
        slowest.1.display()
    );
}

#[test]
fn gguf_reader() {
    replay("gguf_reader");
}

#[test]
fn modelfile() {
    replay("modelfile");
}

#[test]
fn gotemplate() {
    replay("gotemplate");
}

#[test]
fn chat_template() {
    replay("chat_template");
}

#[test]
fn json_schema() {
    replay("json_schema");
}

#[test]
fn names_digests() {
    replay("names_digests");
}

#[test]
fn oci_manifest() {
    replay("oci_manifest");
}

#[test]
fn every_target_has_a_test() {
    let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
    assert_eq!(
        names,
        [
            "gguf_reader",
            "modelfile",
            "gotemplate",
            "chat_template",
            "json_schema",
            "names_digests",
            "oci_manifest"
        ]
    );
}
