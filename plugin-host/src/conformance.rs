//! The backend conformance suite: one set of checks every backend plugin must pass,
//! run through the real ABI. `cargo test` runs it on every plugin in the workspace;
//! `corral plugin check PATH --model FILE` runs it on a third party's plugin.

use std::path::Path;

use corral_backend_api::{BatchEntry, Capabilities, ContextParams, ErrorKind};
use serde::Serialize;

use crate::engine::{Context, Model};

/// Outcome of one check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// Check name.
    pub name: &'static str,
    /// `pass`, `fail` or `skip`.
    pub outcome: Outcome,
    /// What was seen.
    pub detail: String,
}

/// Pass, fail or skip.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The plugin behaves as the contract says.
    Pass,
    /// It does not.
    Fail,
    /// The check does not apply (e.g. embeddings on an engine without them).
    Skip,
    /// The plugin works, but says something about itself that its behaviour does not
    /// bear out (e.g. it generates without declaring generation); not a failure.
    Warn,
}

/// Tolerances for logits comparisons: `|a - b| <= atol + rtol * max|a|`.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// Absolute part.
    pub atol: f32,
    /// Relative part (to the largest magnitude in the reference vector).
    pub rtol: f32,
}

impl Tolerance {
    /// The tolerance for a model of the given predominant quantization. With quantized
    /// weights, engines quantize activations too and batched and single-token paths use
    /// different kernels (tiled GEMM vs dot products), whose rounding differs by up to a
    /// few percent of the logit range; a real bug still moves logits by O(1).
    pub fn for_quantization(quantization: &str) -> Tolerance {
        let q = quantization.to_ascii_uppercase();
        if q.is_empty() || q.starts_with("F32") || q.starts_with("F16") || q.starts_with("BF16") {
            Tolerance::default()
        } else {
            Tolerance { atol: 1e-2, rtol: 5e-2 }
        }
    }
}

impl Default for Tolerance {
    /// Batched and single-sequence decodes run different kernels (different reduction
    /// orders), so they may differ by float rounding; 1e-3 absolute plus 1% of the largest
    /// logit is far below what a real bug (a wrong position, a mixed-up sequence) causes,
    /// which moves logits by O(1).
    fn default() -> Self {
        Tolerance { atol: 1e-3, rtol: 1e-2 }
    }
}

type CheckFn = fn(&Model, &Tolerance) -> Result<String, String>;

const PROMPTS: [&str; 3] = [
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, in a land far away",
    "fn main() { println!(\"héllo, wörld — 日本語 🦀\"); }",
];

/// The checks of the model's contract with the host: what `corral serve` refuses or
/// trips over when a plugin breaks it (a vocabulary of 0, special tokens outside it,
/// logits rows of the wrong length or not finite, capabilities that disagree with what
/// the model does). Each is listed only when it fails or warns, under the fault's name,
/// so a plugin that keeps the contract gets the same report as before they existed.
const CONTRACT: [(&str, CheckFn); 5] = [
    ("vocab_size", vocab_size),
    ("special_tokens", special_tokens),
    ("logits_length", logits_length),
    ("logits_finite", logits_finite),
    ("capabilities", capabilities),
];

/// The behaviour checks, each always listed.
const CHECKS: [(&str, CheckFn); 12] = [
    ("tokenize_roundtrip", tokenize_roundtrip),
    ("token_bytes_concat", token_bytes_concat),
    ("determinism", determinism),
    ("batch_equals_sequential", batch_equals_sequential),
    ("per_sequence_context", per_sequence_context),
    ("kv_remove_redecode", kv_remove_redecode),
    ("kv_copy", kv_copy),
    ("kv_clear", kv_clear),
    ("kv_shift", kv_shift),
    ("invalid_input_errors", invalid_input_errors),
    ("other_thread", other_thread),
    ("embeddings", embeddings),
];

/// Runs every check on `model`.
pub fn run_all(model: &Model, tol: &Tolerance) -> Vec<CheckResult> {
    let mut results = Vec::new();
    run_checks(model, tol, &mut |r| results.push(r.clone()));
    results
}

/// Runs every check on `model`, handing each result to `on_result` as it comes. When
/// the engine is gone for good (its worker crashed or hung, [`Model::health`]), the
/// check that was running fails with what happened and the rest are skipped.
pub fn run_checks(model: &Model, tol: &Tolerance, on_result: &mut dyn FnMut(&CheckResult)) {
    let all = CONTRACT.iter().map(|c| (true, c)).chain(CHECKS.iter().map(|c| (false, c)));
    let mut gone: Option<&'static str> = None;
    for (contract, &(name, f)) in all {
        if let Some(died_in) = gone {
            if !contract {
                on_result(&CheckResult {
                    name,
                    outcome: Outcome::Skip,
                    detail: format!("not run: the engine died in {died_in}"),
                });
            }
            continue;
        }
        let r = catch_quietly(|| f(model, tol));
        let (outcome, detail) = match r {
            Ok(Ok(d)) if d.starts_with("skip:") => (Outcome::Skip, d[5..].trim().to_string()),
            Ok(Ok(d)) if d.starts_with("warn:") => (Outcome::Warn, d[5..].trim().to_string()),
            Ok(Ok(d)) => (Outcome::Pass, d),
            Ok(Err(d)) => (Outcome::Fail, d),
            Err(panic) => (Outcome::Fail, format!("the check panicked in the host: {panic}")),
        };
        let result = CheckResult { name, outcome, detail };
        if let Err(why) = model.health() {
            let detail = if result.outcome == Outcome::Fail && result.detail.contains(&why) {
                result.detail
            } else {
                why
            };
            on_result(&CheckResult { name, outcome: Outcome::Fail, detail });
            gone = Some(name);
            continue;
        }
        if !contract || matches!(result.outcome, Outcome::Fail | Outcome::Warn) {
            on_result(&result);
        }
    }
}

thread_local! {
    /// Set while [`catch_quietly`] runs a check on this thread: its panic message goes
    /// here instead of to stderr with a backtrace.
    static QUIET_PANIC: std::cell::RefCell<Option<Option<String>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f`, turning a panic into its one-line message (with its location) instead of
/// the default hook's report and backtrace. Other threads' panics, and this thread's
/// outside `f`, still reach the previous hook.
fn catch_quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let quiet = QUIET_PANIC.with(|q| {
                let mut q = q.borrow_mut();
                match q.as_mut() {
                    Some(slot) => {
                        let message = info
                            .payload()
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_string())
                            .or_else(|| info.payload().downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic without a message".into());
                        let at = info
                            .location()
                            .map(|l| format!(" (at {}:{})", l.file(), l.line()))
                            .unwrap_or_default();
                        *slot = Some(format!("{message}{at}"));
                        true
                    }
                    None => false,
                }
            });
            if !quiet {
                previous(info);
            }
        }));
    });
    QUIET_PANIC.with(|q| *q.borrow_mut() = Some(None));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let message = QUIET_PANIC.with(|q| q.borrow_mut().take()).flatten();
    r.map_err(|_| message.unwrap_or_else(|| "a panic without a message".into()))
}

/// The outcome of the whole suite on one plugin and model.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `name:variant` of the plugin.
    pub plugin: String,
    /// The model the checks ran on.
    pub model: std::path::PathBuf,
    /// Every check, in order.
    pub results: Vec<CheckResult>,
}

impl Report {
    /// Checks with `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.results.iter().filter(|r| r.outcome == outcome).count()
    }

    /// Whether no check failed.
    pub fn passed(&self) -> bool {
        self.count(Outcome::Fail) == 0
    }
}

impl std::fmt::Display for CheckResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tag = match self.outcome {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "SKIP",
            Outcome::Warn => "WARN",
        };
        write!(f, "  {tag} {:<26} {}", self.name, self.detail)
    }
}

impl Report {
    /// The report's first line: `conformance of PLUGIN on MODEL:`.
    pub fn heading(plugin: &str, model: &Path) -> String {
        format!("conformance of {plugin} on {}:", model.display())
    }

    /// The report's last line: `N passed, N failed, N skipped` (and `, N warned` when
    /// any did).
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} passed, {} failed, {} skipped",
            self.count(Outcome::Pass),
            self.count(Outcome::Fail),
            self.count(Outcome::Skip)
        );
        let warned = self.count(Outcome::Warn);
        if warned > 0 {
            s.push_str(&format!(", {warned} warned"));
        }
        s
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", Report::heading(&self.plugin, &self.model))?;
        for r in &self.results {
            writeln!(f, "{r}")?;
        }
        write!(f, "{}", self.summary())
    }
}

/// Why [`check_plugin`] could not run the suite at all.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// No manifest could be found for the path given.
    #[error("{0}")]
    NoManifest(String),
    /// The manifest does not parse.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    /// The plugin does not load.
    #[error(transparent)]
    Load(#[from] crate::loader::LoadError),
    /// The test model could not be written.
    #[error("cannot generate the test model: {0}")]
    Generate(String),
    /// The plugin cannot load the model.
    #[error("{plugin} could not load {model}: {error}")]
    LoadModel {
        /// `name:variant`.
        plugin: String,
        /// The model file.
        model: std::path::PathBuf,
        /// The plugin's error.
        error: corral_backend_api::BackendError,
    },
}

/// The manifest of the plugin at `path`: a manifest file, a plugin directory holding
/// `manifest.toml`, or a library with a manifest beside it that names it.
pub fn find_manifest(path: &Path) -> Result<std::path::PathBuf, CheckError> {
    use crate::discovery::DIR_MANIFEST_NAME;
    let none = |m: String| Err(CheckError::NoManifest(m));
    if path.is_dir() {
        let m = path.join(DIR_MANIFEST_NAME);
        if m.is_file() {
            return Ok(m);
        }
        return none(format!("{} holds no {DIR_MANIFEST_NAME}", path.display()));
    }
    if !path.exists() {
        return none(format!("{} does not exist", path.display()));
    }
    if path.extension().is_some_and(|e| e == "toml") {
        return Ok(path.to_path_buf());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let lib = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    for d in crate::discovery::discover(&[dir.to_path_buf()]) {
        if d.manifest.as_ref().is_ok_and(|m| m.library == lib) {
            return Ok(d.manifest_path);
        }
    }
    let own = dir.join(DIR_MANIFEST_NAME);
    if own.is_file() {
        return Ok(own);
    }
    none(format!(
        "no manifest beside {} names it; a plugin ships a manifest TOML with its library",
        path.display()
    ))
}

/// Loads the plugin at `plugin` (see [`find_manifest`]) in this process with
/// `options_json` for its init, and runs the whole suite on `model`, or on a tiny
/// generated F32 GGUF model when `model` is `None`. This is what `corral plugin check`
/// runs, and what a third party calls from its own `cargo test`.
pub fn check_plugin_with(
    plugin: &Path,
    model: Option<&Path>,
    options_json: Option<String>,
) -> Result<Report, CheckError> {
    let manifest_path = find_manifest(plugin)?;
    let manifest = crate::manifest::Manifest::load(&manifest_path)?;
    let options = options_json.unwrap_or_else(|| {
        crate::choice::merged_options(&manifest, &crate::choice::BackendOptions::new())
    });
    let loaded = std::sync::Arc::new(crate::loader::load(&manifest, &manifest_path, options)?);
    let (model_path, _tmp) = test_model(model)?;
    let format = format_for(&manifest, &model_path);
    let model = Model::load(
        loaded,
        &model_path.to_string_lossy(),
        &format,
        corral_backend_api::LoadOptions::default(),
    )
    .map_err(|error| CheckError::LoadModel {
        plugin: manifest.id(),
        model: model_path.clone(),
        error,
    })?;
    let tolerance = Tolerance::for_quantization(&model.meta.quantization);
    let results = run_all(&model, &tolerance);
    Ok(Report { plugin: manifest.id(), model: model_path, results })
}

/// The model the checks run on: `model`, or a tiny generated F32 GGUF model in a
/// temporary directory (returned too: the file lives as long as it).
fn test_model(
    model: Option<&Path>,
) -> Result<(std::path::PathBuf, Option<tempfile::TempDir>), CheckError> {
    if let Some(m) = model {
        return Ok((m.to_path_buf(), None));
    }
    let dir = tempfile::tempdir().map_err(|e| CheckError::Generate(e.to_string()))?;
    let p = dir.path().join("tiny.gguf");
    let opts = corral_gguf::generate::GenerateOptions {
        weight_type: corral_gguf::generate::WeightType::F32,
        ..Default::default()
    };
    corral_gguf::generate::generate_llama(&p, &opts)
        .map_err(|e| CheckError::Generate(e.to_string()))?;
    Ok((p, Some(dir)))
}

/// The format the plugin is asked to load `model_path` as.
fn format_for(manifest: &crate::manifest::Manifest, model_path: &Path) -> String {
    let sniffed =
        crate::format::sniff(model_path, None, &|f| manifest.formats.iter().any(|x| x == f));
    if manifest.formats.contains(&sniffed) {
        sniffed
    } else {
        manifest.formats.first().cloned().unwrap_or_else(|| "gguf".into())
    }
}

/// What [`check_plugin_isolated`] reports while it runs, so a caller can print each line
/// as it comes.
pub enum Progress<'a> {
    /// The suite starts: the plugin (`name:variant`) and the model it runs on.
    Start {
        /// `name:variant`.
        plugin: &'a str,
        /// The model file.
        model: &'a Path,
    },
    /// One check's result.
    Result(&'a CheckResult),
}

/// [`check_plugin_with`] with the plugin in a worker process, as `corral serve` runs it
/// ([`crate::worker::WorkerBackend`], each call under `worker`'s watchdog): what the
/// plugin does (abort, segfault, exit, hang) ends its worker, never this process. A
/// plugin that does not initialise or load the model gets a failed `init` or
/// `load_model` check; one whose worker dies during a check fails that check with what
/// happened (the signal, or the watchdog's timeout), and the checks after it are
/// skipped. This is what `corral plugin check` runs.
pub fn check_plugin_isolated(
    plugin: &Path,
    model: Option<&Path>,
    options_json: String,
    worker: crate::worker::WorkerCommand,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Report, CheckError> {
    let manifest_path = find_manifest(plugin)?;
    let manifest = crate::manifest::Manifest::load(&manifest_path)?;
    let id = manifest.id();
    let (model_path, _tmp) = test_model(model)?;
    progress(Progress::Start { plugin: &id, model: &model_path });
    let mut results = Vec::new();
    let mut push = |r: CheckResult, results: &mut Vec<CheckResult>| {
        progress(Progress::Result(&r));
        results.push(r);
    };
    let not_run = |step: &'static str,
                   detail: String,
                   results: &mut Vec<CheckResult>,
                   push: &mut dyn FnMut(CheckResult, &mut Vec<CheckResult>)| {
        push(CheckResult { name: step, outcome: Outcome::Fail, detail }, results);
        for &(name, _) in &CHECKS {
            let detail = format!("not run: {step} failed");
            push(CheckResult { name, outcome: Outcome::Skip, detail }, results);
        }
    };
    let backend = match crate::worker::WorkerBackend::start(
        worker,
        manifest_path.clone(),
        options_json,
        id.clone(),
    ) {
        Ok(b) => b,
        Err(e) => {
            not_run("init", e.message().to_string(), &mut results, &mut push);
            return Ok(Report { plugin: id, model: model_path, results });
        }
    };
    let library_path = manifest_path.parent().unwrap_or(Path::new(".")).join(&manifest.library);
    if let Some(note) = backend.abi_note() {
        tracing::warn!("{}: {note}", library_path.display());
    }
    let loaded = std::sync::Arc::new(crate::engine::LoadedPlugin {
        library_path,
        manifest_path,
        version: backend.version().to_string(),
        abi_minor: None,
        backend: std::sync::Arc::new(backend),
        manifest,
    });
    let format = format_for(&loaded.manifest, &model_path);
    let model = match Model::load(
        loaded,
        &model_path.to_string_lossy(),
        &format,
        corral_backend_api::LoadOptions::default(),
    ) {
        Ok(m) => m,
        Err(e) => {
            let detail = format!("loading {} failed: {e}", model_path.display());
            not_run("load_model", detail, &mut results, &mut push);
            return Ok(Report { plugin: id, model: model_path, results });
        }
    };
    let tolerance = Tolerance::for_quantization(&model.meta.quantization);
    run_checks(&model, &tolerance, &mut |r| push(r.clone(), &mut results));
    drop(model);
    Ok(Report { plugin: id, model: model_path, results })
}

/// [`check_plugin_with`] with the manifest's default options.
pub fn check_plugin(plugin: &Path, model: Option<&Path>) -> Result<Report, CheckError> {
    check_plugin_with(plugin, model, None)
}

fn ctx(model: &Model, n_seq: u32) -> Result<Context, String> {
    model
        .new_context(&ContextParams {
            n_ctx: 512,
            n_batch: 512,
            n_seq_max: n_seq,
            ..Default::default()
        })
        .map_err(|e| format!("new_context failed: {e}"))
}

fn toks(model: &Model, text: &str) -> Result<Vec<u32>, String> {
    let t = model.tokenize(text, true, false).map_err(|e| format!("tokenize failed: {e}"))?;
    if t.len() < 3 {
        return Err(format!("tokenize({text:?}) gave only {} tokens", t.len()));
    }
    in_vocabulary(model, text, &t)?;
    Ok(t)
}

/// Logits of the last token of `tokens` decoded alone in seq 0 of a fresh context.
fn single(model: &Model, tokens: &[u32]) -> Result<Vec<f32>, String> {
    let mut c = ctx(model, 1)?;
    let i = c.prefill(0, 0, tokens).map_err(|e| format!("decode failed: {e}"))?;
    logits_of(model, &mut c, i)
}

/// Entry `i`'s logits, refused (with what is wrong) when the row is not one finite
/// float per vocabulary entry: `corral serve` refuses such rows on every request.
fn logits_of(model: &Model, c: &mut Context, i: usize) -> Result<Vec<f32>, String> {
    let row = c.logits(i).map_err(|e| format!("logits failed: {e}"))?;
    row_problem(model.vocab_size, row).map_or_else(|| Ok(row.to_vec()), Err)
}

/// What is wrong with a logits row for a vocabulary of `vocab_size`, if anything.
fn row_problem(vocab_size: u32, row: &[f32]) -> Option<String> {
    if row.len() != vocab_size as usize {
        return Some(format!(
            "the engine gave {} logits for a vocabulary of {vocab_size}",
            row.len()
        ));
    }
    non_finite("logits", row)
}

/// `None` when every value is finite, else how many are NaN or infinite and where the
/// first is.
fn non_finite(what: &str, values: &[f32]) -> Option<String> {
    let first = values.iter().position(|x| !x.is_finite())?;
    let nan = values.iter().filter(|x| x.is_nan()).count();
    let inf = values.iter().filter(|x| x.is_infinite()).count();
    Some(format!(
        "{what} are not finite: {nan} NaN and {inf} infinite of {} (the first, index {first}, \
         is {}); serve refuses them",
        values.len(),
        values[first]
    ))
}

fn compare(what: &str, reference: &[f32], got: &[f32], tol: &Tolerance) -> Result<f32, String> {
    if reference.len() != got.len() {
        return Err(format!("{what}: logits length {} vs {}", got.len(), reference.len()));
    }
    let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
    let mut worst = 0f32;
    for (i, (a, b)) in reference.iter().zip(got).enumerate() {
        let d = (a - b).abs();
        if !d.is_finite() || d > tol.atol + tol.rtol * scale {
            return Err(format!(
                "{what}: logit {i} differs: {a} vs {b} (tolerance {} + {} x {scale})",
                tol.atol, tol.rtol
            ));
        }
        worst = worst.max(d);
    }
    Ok(worst)
}

/// Refuses token ids outside the vocabulary (serve refuses a prompt holding one).
fn in_vocabulary(model: &Model, text: &str, tokens: &[u32]) -> Result<(), String> {
    match tokens.iter().find(|&&t| t >= model.vocab_size) {
        Some(t) => Err(format!(
            "tokenize({text:?}) gave token {t}, outside the vocabulary of {}",
            model.vocab_size
        )),
        None => Ok(()),
    }
}

fn tokenize_roundtrip(model: &Model, _: &Tolerance) -> Result<String, String> {
    for text in PROMPTS.iter().chain(&["  leading spaces", "tabs\tand\nnewlines\n"]) {
        let t = model.tokenize(text, false, false).map_err(|e| e.to_string())?;
        in_vocabulary(model, text, &t)?;
        let back = model.detokenize(&t).map_err(|e| e.to_string())?;
        if back != *text {
            return Err(format!("detokenize(tokenize({text:?})) = {back:?}"));
        }
    }
    Ok("5 texts round-trip exactly".into())
}

fn token_bytes_concat(model: &Model, _: &Tolerance) -> Result<String, String> {
    let text = PROMPTS[2];
    let t = model.tokenize(text, false, false).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    for &tok in &t {
        bytes.extend(model.token_bytes(tok).map_err(|e| e.to_string())?);
    }
    if bytes != text.as_bytes() {
        return Err(format!("token bytes concatenate to {:?}", String::from_utf8_lossy(&bytes)));
    }
    Ok(format!("{} tokens' bytes rebuild the UTF-8 text", t.len()))
}

fn determinism(model: &Model, _: &Tolerance) -> Result<String, String> {
    let t = toks(model, PROMPTS[0])?;
    let (a, b) = (single(model, &t)?, single(model, &t)?);
    if a != b {
        return Err("two fresh contexts gave different logits for the same prompt".into());
    }
    Ok("identical logits from two contexts".into())
}

fn batch_equals_sequential(model: &Model, tol: &Tolerance) -> Result<String, String> {
    let seqs: Vec<Vec<u32>> = PROMPTS.iter().map(|p| toks(model, p)).collect::<Result<_, _>>()?;
    let mut c = ctx(model, 3)?;
    let worst = interleaved_matches_single(model, &mut c, &seqs, tol)?;
    Ok(format!("3 interleaved sequences match single decodes (max |diff| {worst:.2e})"))
}

/// ABI 1.1's per-sequence context (the server's) decodes like single contexts: the three
/// prompts interleaved in one batch, then one more token of each in a batch of three, as
/// the server's decode steps do.
fn per_sequence_context(model: &Model, tol: &Tolerance) -> Result<String, String> {
    let seqs: Vec<Vec<u32>> = PROMPTS.iter().map(|p| toks(model, p)).collect::<Result<_, _>>()?;
    let mut c = model
        .new_context_per_sequence(&ContextParams {
            n_ctx: 3 * 256,
            n_batch: 512,
            n_seq_max: 3,
            ..Default::default()
        })
        .map_err(|e| format!("new_context_per_sequence failed: {e}"))?;
    let mut worst = interleaved_matches_single(model, &mut c, &seqs, tol)?;
    let next = [seqs[1][1], seqs[2][1], seqs[0][1]];
    let step: Vec<BatchEntry> = (0..3)
        .map(|s| BatchEntry {
            token: next[s],
            pos: seqs[s].len() as u32,
            seq: s as u32,
            logits: true,
        })
        .collect();
    c.decode(&step).map_err(|e| format!("a step of 3 sequences failed: {e}"))?;
    for (s, seq) in seqs.iter().enumerate() {
        let mut longer = seq.clone();
        longer.push(next[s]);
        let reference = single(model, &longer)?;
        let got = logits_of(model, &mut c, s)?;
        worst = worst.max(compare(&format!("step of sequence {s}"), &reference, &got, tol)?);
    }
    // Copying part of a sequence may be unsupported here, but must not bring the
    // process down (llama.cpp asserts on it between KV streams).
    match c.kv_copy(0, 1, 0, 2) {
        Ok(()) => {}
        Err(e) if e.kind == ErrorKind::Unsupported => {}
        Err(e) => return Err(format!("partial kv_copy failed: {e}")),
    }
    Ok(format!(
        "3 sequences in a per-sequence context match single decodes, prompt and step \
         (max |diff| {worst:.2e})"
    ))
}

/// Decodes `seqs` interleaved in one batch of `c` (sequence i as id i) and compares each
/// one's last logits with a single decode; the largest difference.
fn interleaved_matches_single(
    model: &Model,
    c: &mut Context,
    seqs: &[Vec<u32>],
    tol: &Tolerance,
) -> Result<f32, String> {
    let reference: Vec<Vec<f32>> =
        seqs.iter().map(|s| single(model, s)).collect::<Result<_, _>>()?;
    // Interleave the sequences' tokens in one batch.
    let mut batch = Vec::new();
    let mut last = vec![0usize; seqs.len()];
    let longest = seqs.iter().map(Vec::len).max().unwrap_or(0);
    for pos in 0..longest {
        for (s, toks) in seqs.iter().enumerate() {
            if let Some(&token) = toks.get(pos) {
                let is_last = pos + 1 == toks.len();
                if is_last {
                    last[s] = batch.len();
                }
                batch.push(BatchEntry { token, pos: pos as u32, seq: s as u32, logits: is_last });
            }
        }
    }
    c.decode(&batch).map_err(|e| format!("mixed batch decode failed: {e}"))?;
    let mut worst = 0f32;
    for (s, &index) in last.iter().enumerate() {
        let got = logits_of(model, c, index)?;
        worst = worst.max(compare(&format!("sequence {s}"), &reference[s], &got, tol)?);
    }
    Ok(worst)
}

fn kv_remove_redecode(model: &Model, tol: &Tolerance) -> Result<String, String> {
    let t = toks(model, PROMPTS[1])?;
    let n = t.len();
    let mut c = ctx(model, 1)?;
    let i = c.prefill(0, 0, &t).map_err(|e| e.to_string())?;
    let first = logits_of(model, &mut c, i)?;
    if c.kv_pos_max(0) != n as i32 - 1 {
        return Err(format!("kv_pos_max = {} after {n} tokens", c.kv_pos_max(0)));
    }
    // Drop the last 2 positions, then decode them again.
    c.kv_remove(0, n as i32 - 2, -1).map_err(|e| e.to_string())?;
    if c.kv_pos_max(0) != n as i32 - 3 {
        return Err(format!("kv_pos_max = {} after removing the tail", c.kv_pos_max(0)));
    }
    let i = c.prefill(0, n as u32 - 2, &t[n - 2..]).map_err(|e| e.to_string())?;
    let again = logits_of(model, &mut c, i)?;
    let worst = compare("re-decode after kv_remove", &first, &again, tol)?;
    // A different token in the re-decoded slot must change the logits.
    c.kv_remove(0, n as i32 - 1, -1).map_err(|e| e.to_string())?;
    let other = (t[n - 1] + 1)
        .checked_rem(model.vocab_size)
        .ok_or("the vocabulary is empty (vocab_size 0): no token can replace the last")?;
    c.decode(&[BatchEntry { token: other, pos: n as u32 - 1, seq: 0, logits: true }])
        .map_err(|e| e.to_string())?;
    let changed = logits_of(model, &mut c, 0)?;
    if compare("", &first, &changed, &Tolerance { atol: 1e-6, rtol: 0.0 }).is_ok() {
        return Err(
            "replacing the last token did not change the logits: kv_remove had no effect".into()
        );
    }
    Ok(format!("removed tail re-decodes to the same logits (max |diff| {worst:.2e})"))
}

fn kv_copy(model: &Model, tol: &Tolerance) -> Result<String, String> {
    let t = toks(model, PROMPTS[0])?;
    let n = t.len();
    let mut c = ctx(model, 2)?;
    let i = c.prefill(0, 0, &t).map_err(|e| e.to_string())?;
    let reference = logits_of(model, &mut c, i)?;
    // Share all but the last token with seq 1, then decode the last token there.
    c.kv_copy(0, 1, 0, n as i32 - 1).map_err(|e| e.to_string())?;
    if c.kv_pos_max(1) != n as i32 - 2 {
        return Err(format!(
            "kv_pos_max(1) = {} after copying {} positions",
            c.kv_pos_max(1),
            n - 1
        ));
    }
    c.decode(&[BatchEntry { token: t[n - 1], pos: n as u32 - 1, seq: 1, logits: true }])
        .map_err(|e| e.to_string())?;
    let got = logits_of(model, &mut c, 0)?;
    let worst = compare("copied sequence", &reference, &got, tol)?;
    Ok(format!("a copied prefix continues like the original (max |diff| {worst:.2e})"))
}

fn kv_clear(model: &Model, _: &Tolerance) -> Result<String, String> {
    let t = toks(model, PROMPTS[0])?;
    let mut c = ctx(model, 2)?;
    c.prefill(0, 0, &t).map_err(|e| e.to_string())?;
    c.prefill(1, 0, &t).map_err(|e| e.to_string())?;
    c.kv_clear().map_err(|e| e.to_string())?;
    if c.kv_pos_max(0) != -1 || c.kv_pos_max(1) != -1 {
        return Err("sequences not empty after kv_clear".into());
    }
    c.prefill(0, 0, &t).map_err(|e| e.to_string())?;
    c.kv_remove(-1, 0, -1).map_err(|e| e.to_string())?;
    if c.kv_pos_max(0) != -1 {
        return Err("kv_remove(-1, 0, -1) left sequence 0 non-empty".into());
    }
    Ok("clear and remove-all empty every sequence".into())
}

/// ABI 1.1's `kv_shift`: a whole sequence moved up by 7 positions continues exactly as
/// before (position encodings like RoPE depend on distances only, so only the rounding of
/// the re-encoded keys differs), and moved back down again too. Skipped for engines that
/// answer `Unsupported`. (A shift after cutting a hole cannot be checked this way: the
/// kept tokens' states attended to the cut ones.)
fn kv_shift(model: &Model, tol: &Tolerance) -> Result<String, String> {
    let t = toks(model, PROMPTS[1])?;
    let n = t.len();
    let reference = single(model, &t)?;
    let mut c = ctx(model, 1)?;
    c.prefill(0, 0, &t[..n - 1]).map_err(|e| e.to_string())?;
    let declared = model.capabilities.contains(Capabilities::CONTEXT_SHIFT);
    match c.kv_shift(0, 0, -1, 7) {
        Err(e) if e.kind == ErrorKind::Unsupported && !declared => {
            return Ok(format!("skip: the engine does not declare context-shift ({e})"));
        }
        Err(e) if e.kind == ErrorKind::Unsupported => {
            return Err(format!("the engine declares context-shift but kv_shift says: {e}"));
        }
        r => r.map_err(|e| format!("kv_shift(0, 0, -1, 7) failed: {e}"))?,
    }
    let pos_max = c.kv_pos_max(0);
    if pos_max != (n - 2 + 7) as i32 {
        return Err(format!("after a shift by 7, kv_pos_max is {pos_max}, not {}", n - 2 + 7));
    }
    let step = |c: &mut Context, pos: usize| -> Result<Vec<f32>, String> {
        c.decode(&[BatchEntry { token: t[n - 1], pos: pos as u32, seq: 0, logits: true }])
            .map_err(|e| format!("decode after the shift failed: {e}"))?;
        logits_of(model, c, 0)
    };
    let up = step(&mut c, n - 1 + 7)?;
    let mut worst = compare("sequence shifted by +7", &reference, &up, tol)?;
    // Back down: drop the last token, shift by -7, decode it again at its first position.
    c.kv_remove(0, (n - 1 + 7) as i32, -1).map_err(|e| e.to_string())?;
    c.kv_shift(0, 7, -1, -7).map_err(|e| format!("kv_shift(0, 7, -1, -7) failed: {e}"))?;
    let down = step(&mut c, n - 1)?;
    worst = worst.max(compare("sequence shifted back by -7", &reference, &down, tol)?);
    Ok(format!(
        "a sequence moved up 7 positions and back continues as before (max |diff| {worst:.2e})"
    ))
}

fn expect_invalid(
    what: &str,
    r: Result<(), corral_backend_api::BackendError>,
) -> Result<(), String> {
    match r {
        Err(e) if e.kind == ErrorKind::InvalidInput => Ok(()),
        Err(e) => Err(format!("{what}: expected an invalid-input error, got {e}")),
        Ok(()) => Err(format!("{what}: accepted")),
    }
}

fn invalid_input_errors(model: &Model, _: &Tolerance) -> Result<String, String> {
    let mut c = ctx(model, 2)?;
    let n_ctx = c.params.n_ctx;
    let e = |token, pos, seq| [BatchEntry { token, pos, seq, logits: true }];
    expect_invalid("token == vocab_size", c.decode(&e(model.vocab_size, 0, 0)))?;
    expect_invalid("token u32::MAX", c.decode(&e(u32::MAX, 0, 0)))?;
    expect_invalid("position == n_ctx", c.decode(&e(1, n_ctx, 0)))?;
    expect_invalid("sequence == n_seq_max", c.decode(&e(1, 0, 2)))?;
    expect_invalid("empty batch", c.decode(&[]))?;
    expect_invalid("token_to_bytes(vocab_size)", model.token_bytes(model.vocab_size).map(|_| ()))?;
    // The context still works afterwards.
    c.decode(&e(1, 0, 0)).map_err(|e| format!("context unusable after errors: {e}"))?;
    if c.logits(5).is_ok() {
        return Err("logits of a batch entry that does not exist were returned".into());
    }
    Ok("bad tokens, positions, sequences and empty batches are refused; context still usable"
        .into())
}

fn other_thread(model: &Model, tol: &Tolerance) -> Result<String, String> {
    let t = toks(model, PROMPTS[2])?;
    let reference = single(model, &t)?;
    let c = ctx(model, 1)?;
    let got = std::thread::scope(|s| {
        s.spawn(move || {
            let mut c = c;
            let i = c.prefill(0, 0, &t).map_err(|e| e.to_string())?;
            logits_of(model, &mut c, i)
        })
        .join()
        .map_err(|_| "the other thread panicked".to_string())?
    })?;
    let worst = compare("decode on another thread", &reference, &got, tol)?;
    Ok(format!("a context moved to another thread decodes the same (max |diff| {worst:.2e})"))
}

fn embeddings(model: &Model, _: &Tolerance) -> Result<String, String> {
    let params = ContextParams {
        n_ctx: 512,
        n_batch: 512,
        n_seq_max: 2,
        embeddings: true,
        ..Default::default()
    };
    let declared = model.capabilities.contains(Capabilities::EMBEDDINGS);
    let skip = |e: &corral_backend_api::BackendError| -> Result<String, String> {
        if declared {
            Err(format!("the engine declares embeddings but answers: {e}"))
        } else {
            Ok(format!("skip: the engine does not declare embeddings ({e})"))
        }
    };
    let mut c = match model.new_context(&params) {
        Ok(c) => c,
        Err(e) if e.kind == ErrorKind::Unsupported => return skip(&e),
        Err(e) => return Err(format!("embeddings context: {e}")),
    };
    let a = toks(model, PROMPTS[0])?;
    let b = toks(model, PROMPTS[1])?;
    let mut batch: Vec<BatchEntry> = a
        .iter()
        .enumerate()
        .map(|(i, &t)| BatchEntry { token: t, pos: i as u32, seq: 0, logits: true })
        .collect();
    batch.extend(b.iter().enumerate().map(|(i, &t)| BatchEntry {
        token: t,
        pos: i as u32,
        seq: 1,
        logits: true,
    }));
    match c.decode(&batch) {
        Ok(()) => {}
        Err(e) if e.kind == ErrorKind::Unsupported => return skip(&e),
        Err(e) => return Err(format!("embeddings decode: {e}")),
    }
    let ea = c.embeddings(0).map_err(|e| e.to_string())?;
    let eb = c.embeddings(1).map_err(|e| e.to_string())?;
    let width = model.meta.embedding_length as usize;
    for (seq, e) in [(0, &ea), (1, &eb)] {
        if e.is_empty() {
            return Err(format!("sequence {seq}'s embedding is empty"));
        }
        if width > 0 && e.len() != width {
            return Err(format!(
                "sequence {seq}'s embedding has {} values, but the model's embedding_length \
                 is {width}",
                e.len()
            ));
        }
        if let Some(why) = non_finite(&format!("sequence {seq}'s embedding values"), e) {
            return Err(why);
        }
    }
    if ea.len() != eb.len() {
        return Err(format!("embeddings of different lengths: {} and {}", ea.len(), eb.len()));
    }
    if ea == eb {
        return Err("two different texts gave the same embedding".into());
    }
    Ok(format!("two sequences pooled to {}-dimensional vectors", ea.len()))
}

fn vocab_size(model: &Model, _: &Tolerance) -> Result<String, String> {
    if model.vocab_size == 0 {
        return Err("vocab_size() is 0: no token id is valid, so serve refuses every prompt \
                    (\"token N is out of range (vocabulary size 0)\")"
            .into());
    }
    Ok(format!("{} tokens", model.vocab_size))
}

fn special_tokens(model: &Model, _: &Tolerance) -> Result<String, String> {
    let sp = &model.special;
    let named = [("bos", sp.bos), ("eos", sp.eos), ("eot", sp.eot)];
    let out: Vec<String> = named
        .iter()
        .filter_map(|&(n, id)| id.map(|id| (n.to_string(), id)))
        .chain(sp.eog.iter().enumerate().map(|(i, &id)| (format!("eog[{i}]"), id)))
        .filter(|&(_, id)| id >= model.vocab_size)
        .map(|(n, id)| format!("{n} = {id}"))
        .collect();
    if !out.is_empty() {
        return Err(format!(
            "special token ids outside the vocabulary of {}: {}",
            model.vocab_size,
            out.join(", ")
        ));
    }
    Ok("every special token id is in the vocabulary".into())
}

/// The logits row of the last token of a prompt decoded in a fresh context, as the
/// engine gives it (not checked).
fn raw_row(model: &Model) -> Result<Vec<f32>, String> {
    let t = model.tokenize(PROMPTS[0], true, false).map_err(|e| format!("tokenize failed: {e}"))?;
    let mut c = ctx(model, 1)?;
    let i = c.prefill(0, 0, &t).map_err(|e| format!("decode failed: {e}"))?;
    c.logits(i).map(<[f32]>::to_vec).map_err(|e| format!("logits failed: {e}"))
}

/// Whether `error` is an engine worker's refusal of a logits row of the wrong length
/// (`worker/serve.rs` checks every row it copies): the fault [`logits_length`] names.
fn is_length_fault(error: &str) -> bool {
    error.contains("logits for a vocabulary of")
}

fn logits_length(model: &Model, _: &Tolerance) -> Result<String, String> {
    let row = match raw_row(model) {
        Ok(row) => row,
        Err(e) if is_length_fault(&e) => {
            return Err(format!("logits(i) does not have vocab_size values: {e}"));
        }
        // Not this check's fault: `capabilities` reports a decode that fails.
        Err(e) => return Ok(format!("no logits row to measure: {e}")),
    };
    if row.len() != model.vocab_size as usize {
        return Err(format!(
            "logits(i) has {} values for a vocabulary of {}: serve refuses every request \
             (\"the engine gave {} logits for a vocabulary of {}\")",
            row.len(),
            model.vocab_size,
            row.len(),
            model.vocab_size
        ));
    }
    Ok(format!("{} logits per row", row.len()))
}

fn logits_finite(model: &Model, _: &Tolerance) -> Result<String, String> {
    let row = match raw_row(model) {
        Ok(row) => row,
        // A row of the wrong length, or a decode that fails: the checks named for those.
        Err(e) => return Ok(format!("no logits row to check: {e}")),
    };
    match non_finite("logits", &row) {
        Some(why) => Err(why),
        None => Ok("every logit is finite".into()),
    }
}

/// What the model declares ([`Model::capabilities`]) against what it does: declaring
/// generation or embeddings that fail is a failure; doing what it does not declare is a
/// warning (the host may refuse requests the model could serve).
fn capabilities(model: &Model, _: &Tolerance) -> Result<String, String> {
    let caps = model.capabilities;
    let generates = raw_row(model);
    let mut warnings = Vec::new();
    match (&generates, caps.contains(Capabilities::GENERATION)) {
        (Err(e), true) if !is_length_fault(e) => {
            return Err(format!("the model declares generation, but {e}"));
        }
        (Ok(row), false) if !row.is_empty() => warnings.push(
            "it decodes a prompt to logits but does not declare generation \
             (Capabilities::GENERATION)",
        ),
        _ => {}
    }
    if !caps.contains(Capabilities::EMBEDDINGS) && embeds(model) {
        warnings.push("it answers embeddings but does not declare them (Capabilities::EMBEDDINGS)");
    }
    if warnings.is_empty() {
        Ok(format!("declares {:?}, and does it", caps.names()))
    } else {
        Ok(format!("warn: {}", warnings.join("; ")))
    }
}

/// Whether an embeddings context of `model` pools a prompt to a vector.
fn embeds(model: &Model) -> bool {
    let params = ContextParams {
        n_ctx: 512,
        n_batch: 512,
        n_seq_max: 1,
        embeddings: true,
        ..Default::default()
    };
    let Ok(t) = model.tokenize(PROMPTS[0], true, false) else { return false };
    let Ok(mut c) = model.new_context(&params) else { return false };
    let batch: Vec<BatchEntry> = t
        .iter()
        .enumerate()
        .map(|(i, &token)| BatchEntry { token, pos: i as u32, seq: 0, logits: true })
        .collect();
    c.decode(&batch).is_ok() && c.embeddings(0).is_ok_and(|e| !e.is_empty())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use corral_backend_api::{BackendError, Device, LoadOptions, ModelInfo, SpecialTokenIds};

    use super::*;
    use crate::engine::{BackendHandle, ContextHandle, ContextKind, LoadedPlugin, ModelHandle};

    /// A fake engine that breaks the contract as its fields say. Logits are one value
    /// per configured slot; tokens are bytes.
    #[derive(Clone)]
    struct Fake {
        vocab: u32,
        logits_len: usize,
        logit: f32,
        special: SpecialTokenIds,
        caps: Capabilities,
        decode_fails: bool,
        embedding: Option<Vec<f32>>,
        embedding_length: u32,
    }

    impl Default for Fake {
        fn default() -> Self {
            Fake {
                vocab: 259,
                logits_len: 259,
                logit: 0.5,
                special: SpecialTokenIds {
                    bos: Some(256),
                    eos: Some(257),
                    eog: vec![257],
                    ..Default::default()
                },
                caps: Capabilities::GENERATION,
                decode_fails: false,
                embedding: None,
                embedding_length: 16,
            }
        }
    }

    struct FakeContext(Fake, Vec<f32>);

    impl BackendHandle for Fake {
        fn devices(&self) -> Vec<Device> {
            Vec::new()
        }
        fn describe(&self) -> String {
            "fake".into()
        }
        fn load_model(
            &self,
            _: &str,
            _: &str,
            _: LoadOptions,
        ) -> Result<Box<dyn ModelHandle>, BackendError> {
            Ok(Box::new(self.clone()))
        }
    }

    impl ModelHandle for Fake {
        fn metadata(&self) -> ModelInfo {
            ModelInfo { embedding_length: self.embedding_length, ..Default::default() }
        }
        fn special_tokens(&self) -> SpecialTokenIds {
            self.special.clone()
        }
        fn vocab_size(&self) -> u32 {
            self.vocab
        }
        fn capabilities(&self) -> Capabilities {
            self.caps
        }
        fn tokenize(&self, text: &str, _: bool, _: bool) -> Result<Vec<u32>, BackendError> {
            Ok(text.bytes().map(u32::from).collect())
        }
        fn token_bytes(&self, token: u32) -> Result<Vec<u8>, BackendError> {
            u8::try_from(token).map(|b| vec![b]).map_err(|_| BackendError::invalid("no such"))
        }
        fn detokenize(&self, tokens: &[u32]) -> Result<String, BackendError> {
            let bytes: Vec<u8> = tokens.iter().filter_map(|&t| u8::try_from(t).ok()).collect();
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
        fn new_context(
            &self,
            params: &ContextParams,
            _: ContextKind,
        ) -> Result<Box<dyn ContextHandle>, BackendError> {
            if params.embeddings && self.embedding.is_none() {
                return Err(BackendError::unsupported("no embeddings"));
            }
            Ok(Box::new(FakeContext(self.clone(), Vec::new())))
        }
    }

    impl ContextHandle for FakeContext {
        fn params(&self) -> ContextParams {
            ContextParams { n_ctx: 512, n_batch: 512, n_seq_max: 3, ..Default::default() }
        }
        fn decode(&mut self, _: &[BatchEntry]) -> Result<(), BackendError> {
            if self.0.decode_fails {
                return Err(BackendError::internal("decode is broken"));
            }
            Ok(())
        }
        fn logits(&mut self, _: u32) -> Result<&mut [f32], BackendError> {
            self.1 = vec![self.0.logit; self.0.logits_len];
            Ok(&mut self.1)
        }
        fn embeddings(&self, seq: u32) -> Result<Vec<f32>, BackendError> {
            let mut e = self.0.embedding.clone().unwrap_or_default();
            if let Some(x) = e.last_mut() {
                *x += seq as f32;
            }
            Ok(e)
        }
        fn kv_remove(&mut self, _: i32, _: i32, _: i32) -> Result<(), BackendError> {
            Ok(())
        }
        fn kv_copy(&mut self, _: u32, _: u32, _: i32, _: i32) -> Result<(), BackendError> {
            Ok(())
        }
        fn kv_pos_max(&self, _: u32) -> i32 {
            -1
        }
        fn kv_clear(&mut self) -> Result<(), BackendError> {
            Ok(())
        }
        fn kv_shift(&mut self, _: u32, _: i32, _: i32, _: i32) -> Result<(), BackendError> {
            Err(BackendError::unsupported("no shift"))
        }
    }

    fn run(fake: Fake) -> Vec<CheckResult> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake.toml");
        std::fs::write(
            &path,
            "name = \"fake\"\nversion = \"0.1.0\"\nvariant = \"cpu\"\nlibrary = \"libfake.so\"\nabi = \"1.3\"\n\
             formats = [\"gguf\"]\n",
        )
        .unwrap();
        let manifest = crate::manifest::Manifest::load(&path).unwrap();
        let plugin = Arc::new(LoadedPlugin {
            manifest,
            manifest_path: path.clone(),
            library_path: path,
            version: "0".into(),
            abi_minor: None,
            backend: Arc::new(fake),
        });
        let model = Model::load(plugin, "m", "gguf", LoadOptions::default()).unwrap();
        run_all(&model, &Tolerance::default())
    }

    /// The result of check `name`, if it is listed.
    fn find<'a>(results: &'a [CheckResult], name: &str) -> Option<&'a CheckResult> {
        results.iter().find(|r| r.name == name)
    }

    fn failed<'a>(results: &'a [CheckResult], name: &str) -> &'a str {
        match find(results, name) {
            Some(r) if r.outcome == Outcome::Fail => &r.detail,
            _ => panic!("{name} did not fail: {results:#?}"),
        }
    }

    #[test]
    fn contract_checks_are_listed_only_when_broken() {
        let results = run(Fake::default());
        for name in CONTRACT.iter().map(|c| c.0) {
            assert!(find(&results, name).is_none(), "{name} listed: {results:#?}");
        }
        assert_eq!(results.len(), CHECKS.len());
    }

    #[test]
    fn logits_of_the_wrong_length_fail_a_check_named_for_it() {
        for len in [3, 259_000, 0] {
            let r = run(Fake { logits_len: len, ..Fake::default() });
            let d = failed(&r, "logits_length");
            assert!(d.contains(&format!("{len} values for a vocabulary of 259")), "{d}");
            // Every check that reads logits says why, not "different logits".
            assert!(failed(&r, "determinism").contains(&format!("gave {len} logits")), "{r:#?}");
        }
    }

    #[test]
    fn non_finite_logits_are_named() {
        for (v, word) in [(f32::NAN, "259 NaN"), (f32::INFINITY, "259 infinite")] {
            let r = run(Fake { logit: v, ..Fake::default() });
            assert!(failed(&r, "logits_finite").contains(word), "{r:#?}");
            let d = failed(&r, "determinism");
            assert!(d.contains("not finite") && !d.contains("differ"), "{d}");
        }
    }

    #[test]
    fn special_tokens_outside_the_vocabulary_fail() {
        let special = SpecialTokenIds {
            bos: Some(u32::MAX),
            eos: Some(999_999),
            eog: vec![257, 999_999],
            ..Default::default()
        };
        let r = run(Fake { special, ..Fake::default() });
        let d = failed(&r, "special_tokens");
        assert!(d.contains("bos = 4294967295") && d.contains("eos = 999999"), "{d}");
        assert!(d.contains("eog[1] = 999999") && !d.contains("eog[0]"), "{d}");
    }

    #[test]
    fn a_vocabulary_of_zero_fails_without_a_panic() {
        let r =
            run(Fake { vocab: 0, logits_len: 0, special: Default::default(), ..Fake::default() });
        assert!(failed(&r, "vocab_size").contains("vocab_size() is 0"), "{r:#?}");
        assert!(r.iter().all(|c| !c.detail.contains("panicked")), "a check panicked: {r:#?}");
        assert!(failed(&r, "kv_remove_redecode").contains("outside the vocabulary of 0"));
    }

    #[test]
    fn capabilities_are_compared_with_what_the_model_does() {
        // Declares nothing, yet generates and embeds: warnings, not failures.
        let r = run(Fake {
            caps: Capabilities::empty(),
            embedding: Some(vec![0.25; 16]),
            ..Fake::default()
        });
        let c = find(&r, "capabilities").expect("capabilities listed");
        assert_eq!(c.outcome, Outcome::Warn, "{c:?}");
        assert!(c.detail.contains("GENERATION") && c.detail.contains("EMBEDDINGS"), "{c:?}");
        // Declares generation, but decode fails.
        let r = run(Fake { decode_fails: true, ..Fake::default() });
        let d = failed(&r, "capabilities");
        assert!(d.contains("declares generation") && d.contains("decode is broken"), "{d}");
    }

    #[test]
    fn bad_embeddings_say_what_is_wrong() {
        let caps = Capabilities::GENERATION | Capabilities::EMBEDDINGS;
        let r = run(Fake { caps, embedding: Some(vec![0.5; 3]), ..Fake::default() });
        let d = failed(&r, "embeddings");
        assert!(d.contains("has 3 values") && d.contains("embedding_length is 16"), "{d}");
        let mut nan = vec![0.5; 16];
        nan[4] = f32::NAN;
        let r = run(Fake { caps, embedding: Some(nan), ..Fake::default() });
        let d = failed(&r, "embeddings");
        assert!(d.contains("1 NaN") && d.contains("index 4"), "{d}");
        let r = run(Fake { caps, embedding: Some(vec![0.5; 16]), ..Fake::default() });
        assert_eq!(find(&r, "embeddings").map(|c| c.outcome), Some(Outcome::Pass), "{r:#?}");
    }

    #[test]
    fn a_check_that_panics_is_one_line() {
        let r = catch_quietly(|| -> u32 { panic!("boom {}", 7) });
        let message = r.unwrap_err();
        assert!(message.starts_with("boom 7 (at ") && !message.contains('\n'), "{message}");
        assert_eq!(catch_quietly(|| 5), Ok(5));
    }
}
